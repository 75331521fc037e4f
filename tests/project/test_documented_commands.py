"""Every ``pscl-train`` command that the documentation shows still composes and resolves.

The commands come from README.md and docs/*.md (fenced code blocks and inline code) and from the
comment lines ``#   pscl-train ...`` of the packaged configs (conf/**/*.yaml). A command is
composed as ``pscl-train`` would compose it: old key names are rewritten first
(:func:`pscl.runs.renamed_keys.translate_overrides`, where that exists), ``-m`` / ``--multirun``
is dropped and each sweep (``a=1,2,3``, ``choice(...)``, ``range(...)``) is replaced by its
first value, then the ``train`` config is composed with Hydra's compose API and resolved.
Interpolations that need a running Hydra app (``${hydra:runtime.output_dir}``) get a stand-in.

Lines with a placeholder (``<folder>``, ``...``, a bare ``key=``) are not commands; nor is a
bare ``pscl-train`` inside prose (a mention of the command).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "pscl-train"
# flags of pscl-train that are not overrides: dropped (they change what Hydra does, not the config)
DROPPED_FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--resolve", "--info", "-i"}
# flags that take a value, dropped with it
DROPPED_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# a doc's "one of": method=pscl_simclr|pscl_moco (not inside quotes or brackets)
ALTERNATIVES = re.compile(r"^(?P<key>[\w./@+~-]+)=(?P<first>[\w.:/-]+)(\|[\w.:/-]+)+$")


@dataclass(frozen=True)
class Documented:
    file: str  # relative to the repository root
    line: int
    text: str  # the command as written (continuations joined)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def is_placeholder(text: str) -> bool:
    return bool(re.search(r"<[^>]*>|\.\.\.|…", text))


def command_words(text: str) -> list[str] | None:
    """The words after ``pscl-train`` (env assignments and a ``$ `` prompt before it allowed), or
    None when ``text`` is not a pscl-train command."""
    text = text.strip()
    if text.startswith("$ "):
        text = text[2:]
    # a trailing "(note)" after two spaces, as in conf/experiment/*.yaml comments
    text = re.sub(r"\s{2,}\(.*\)\s*$", "", text)
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return None
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words or words[0] != COMMAND:
        return None
    return words[1:]


def env_of(text: str) -> dict[str, str]:
    """The ``VAR=value`` assignments in front of the command."""
    env = {}
    for word in shlex.split(text.strip().removeprefix("$ "), comments=True):
        if not ENV_ASSIGNMENT.match(word):
            break
        key, value = word.split("=", 1)
        env[key] = value
    return env


def joined_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """``(first line number, text)`` with backslash-continued lines joined."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in lines:
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line.strip()
            pending = None
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        out.append((number, line))
    if pending is not None:
        out.append(pending)
    return out


def from_markdown(path: Path) -> list[Documented]:
    name = str(path.relative_to(ROOT))
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Documented] = []
    fenced: list[tuple[int, str]] = []
    prose: list[str] = []  # the text outside code blocks, code lines blanked (keeps line numbers)
    in_block = False
    for number, line in enumerate(lines, start=1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            prose.append("")
            continue
        if in_block:
            fenced.append((number, line))
            prose.append("")
        else:
            prose.append(line)
    for number, line in joined_lines(fenced):
        words = command_words(line)
        if words is not None:
            found.append(Documented(name, number, line.strip()))
    text = "\n".join(prose)
    # inline code may wrap onto the next line of its paragraph, never across a blank line
    for match in re.finditer(r"(?<!`)`([^`]+?)`(?!`)", text):
        code = match.group(1)
        if "\n\n" in code:
            continue
        code = " ".join(code.split())
        words = command_words(code)
        if words:  # a bare `pscl-train` in prose names the command, it is not one
            found.append(Documented(name, text.count("\n", 0, match.start()) + 1, code))
    return found


def from_yaml_comments(path: Path) -> list[Documented]:
    name = str(path.relative_to(ROOT))
    comments = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append((number, stripped.lstrip("#").strip()))
        else:
            comments.append((number, ""))
    return [Documented(name, number, text) for number, text in joined_lines(comments)
            if text.startswith(COMMAND + " ") and command_words(text) is not None]


def documented_commands() -> list[Documented]:
    commands: list[Documented] = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        commands += from_markdown(path)
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        commands += from_yaml_comments(path)
    return sorted(commands, key=lambda command: (command.file, command.line))


ALL_COMMANDS = documented_commands()
COMMANDS = [command for command in ALL_COMMANDS if not is_placeholder(command.text)
            and not any(word.endswith("=") for word in command_words(command.text) or [])]


def command_ids(commands: list[Documented]) -> list[str]:
    """``file:line``, with ``#2``, ``#3`` for a second and third command on one line."""
    ids: list[str] = []
    for command in commands:
        repeats = sum(other.where == command.where for other in commands[:len(ids)])
        ids.append(command.where if repeats == 0 else f"{command.where}#{repeats + 1}")
    return ids


IDS = command_ids(COMMANDS)


def overrides_of(words: list[str]) -> list[str]:
    """The overrides of a command line as pscl-train would compose them for its first job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        from pscl.runs.renamed_keys import translate_overrides
    except ImportError:  # a tree from before the configs were regrouped
        def translate_overrides(overrides):
            return list(overrides), []

    kept: list[str] = []
    skip_value = False
    for word in words:
        if skip_value:
            skip_value = False
            continue
        if word in DROPPED_FLAGS:
            continue
        if word in DROPPED_FLAGS_WITH_VALUE:
            skip_value = True
            continue
        if word.startswith("-"):
            raise ValueError(f"unknown option {word!r}")
        if word.startswith("[") and word.endswith("]") and "=" in word:  # [optional=override]
            word = word[1:-1]
        match = ALTERNATIVES.match(word)
        if match:
            word = f"{match.group('key')}={match.group('first')}"
        kept.append(word)
    kept, _notes = translate_overrides(kept)
    firsts = []
    for override in OverridesParser.create().parse_overrides(kept):
        if override.is_sweep_override():
            firsts.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
        else:
            firsts.append(override.input_line)
    return firsts


@pytest.fixture(scope="module")
def hydra_context():
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pscl.conf", version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def stand_in_for_hydra_nodes(cfg, output_dir: str) -> None:
    """Give every ``${hydra:...}`` interpolation outside the hydra node a stand-in path."""
    from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

    def visit(node) -> None:
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        for key in keys:
            child = node._get_node(key)
            if OmegaConf.is_interpolation(node, key):
                if "${hydra:" in str(child._value()):
                    with open_dict(node):
                        node[key] = f"{output_dir}/{key}"
            elif isinstance(child, (DictConfig, ListConfig)) and not child._is_missing() and not child._is_none():
                visit(child)

    visit(cfg)


@lru_cache(maxsize=None)
def composed(overrides: tuple[str, ...], env: tuple[tuple[str, str], ...]) -> str | None:
    """None when ``overrides`` compose and resolve, else why not."""
    from hydra import compose
    from omegaconf import OmegaConf

    saved = {key: os.environ.get(key) for key, _ in env}
    os.environ.update(dict(env))
    try:
        cfg = compose("train", overrides=list(overrides))
        stand_in_for_hydra_nodes(cfg, "/tmp/pscl-documented-command")
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # the message is the test's failure
        return f"{type(exc).__name__}: {exc}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return None


def test_the_documentation_has_commands():
    files = {command.file for command in COMMANDS}
    assert len(COMMANDS) >= 40, f"found only {len(COMMANDS)} pscl-train commands: is the extraction broken?"
    assert {"README.md", "docs/results.md"} <= files, sorted(files)
    assert any(file.startswith("conf/experiment/") for file in files), sorted(files)


def test_extraction_rules():
    assert command_words("$ pscl-train -m a=1,2  # comment") == ["-m", "a=1,2"]
    assert command_words("PSCL_NASA_ROOT=x pscl-train data=nasa_superalloy") == ["data=nasa_superalloy"]
    assert command_words("pscl-train experiment=paper data.label_seed=0      (trainer=cpu works)") == [
        "experiment=paper", "data.label_seed=0"]
    assert command_words("pscl-report --out grid") is None
    assert joined_lines([(1, "pscl-train a=1 \\"), (2, "    b=2"), (3, "x")]) == [(1, "pscl-train a=1  b=2"),
                                                                                   (3, "x")]
    assert is_placeholder("pscl-train resume=logs/train/runs/<time>")
    assert is_placeholder("pscl-train key=value ...")
    assert overrides_of(["-m", "a=1,2,3", "b=[1,2]", "c=x|y", "[hydra/launcher=slurm]"]) == [
        "a=1", "b=[1,2]", "c=x", "hydra/launcher=slurm"]


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_documented_command_composes(command: Documented, hydra_context):
    try:
        overrides = overrides_of(command_words(command.text) or [])
    except Exception as exc:
        pytest.fail(f"{command.where}: `{command.text}` does not parse: {type(exc).__name__}: {exc}")
    error = composed(tuple(overrides), tuple(sorted(env_of(command.text).items())))
    assert error is None, (f"{command.where}: `{command.text}` no longer composes "
                           f"(overrides {overrides}):\n{error}")
