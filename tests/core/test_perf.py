"""Memory-allocator selection (pscl.perf): which allocator a process gets, and that it gets it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from pscl import perf

needs_mimalloc = pytest.mark.skipif(perf.mimalloc_library() is None or not sys.platform.startswith("linux"),
                                    reason="cmeel-mimalloc not installed (Linux only)")


def test_unknown_allocator_is_refused() -> None:
    with pytest.raises(ValueError, match="PSCL_ALLOCATOR must be one of"):
        perf.requested_allocator({"PSCL_ALLOCATOR": "tcmalloc"})
    assert perf.requested_allocator({}) == "mimalloc"


@needs_mimalloc
def test_mimalloc_environment_preloads_the_library_once() -> None:
    env = perf.mimalloc_environment({"PATH": "/bin", "LD_PRELOAD": "/opt/other.so"})
    assert env is not None
    library = str(perf.mimalloc_library())
    assert env["LD_PRELOAD"] == f"{library}:/opt/other.so"
    assert env["MIMALLOC_PURGE_DELAY"] == "-1"
    assert env["PATH"] == "/bin"
    # already preloaded, or another allocator requested: nothing to do (so re-executing cannot loop)
    assert perf.mimalloc_environment(env) is None
    assert perf.mimalloc_environment({"PSCL_ALLOCATOR": "glibc-tuned"}) is None
    assert perf.mimalloc_environment({"PSCL_ALLOCATOR": "glibc"}) is None


@needs_mimalloc
@pytest.mark.parametrize(("requested", "expected"), [("mimalloc", "mimalloc"), ("glibc-tuned", "glibc-tuned"),
                                                     ("glibc", "glibc")])
def test_configure_allocator_in_a_fresh_process(tmp_path: Path, requested: str, expected: str) -> None:
    """The re-executed process has mimalloc mapped, and the command line survives the re-exec."""
    script = tmp_path / "probe.py"
    script.write_text("import sys\nfrom pscl.perf import configure_allocator, mimalloc_active\n"
                      "print(configure_allocator(), mimalloc_active(), sys.argv[1:])\n")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["PSCL_ALLOCATOR"] = requested
    out = subprocess.run([sys.executable, str(script), "a b", "--x=1"], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split(maxsplit=2)
    assert out[0] == expected
    assert out[1] == str(expected == "mimalloc")
    assert out[2].strip() == "['a b', '--x=1']"


def test_glibc_means_hands_off(monkeypatch) -> None:
    monkeypatch.setenv("PSCL_ALLOCATOR", "glibc")
    assert perf.tune_allocator() is False


def test_cli_rejects_an_unknown_allocator(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PSCL_ALLOCATOR", "jemalloc")
    proc = run_cli(["debug=fast_dev_run"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "PSCL_ALLOCATOR must be one of" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_entry_point_chooses_the_allocator_before_importing_torch() -> None:
    """Re-executing after torch is loaded would load it twice; pscl.cli decides before that."""
    code = ("import sys, pscl.cli, pscl.perf; pscl.perf.mimalloc_environment(); "
            "print('torch' in sys.modules, 'pscl.training' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_console_script_rejects_an_unknown_allocator(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("pscl-train")
    if not script.is_file():
        pytest.skip("pscl-train is not installed next to this interpreter")
    env = {**os.environ, "PSCL_ALLOCATOR": "jemalloc", "PSCL_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.run([str(script), "debug=fast_dev_run"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "PSCL_ALLOCATOR must be one of" in proc.stderr and "Traceback" not in proc.stderr
