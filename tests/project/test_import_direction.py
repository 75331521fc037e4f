"""The direction of imports inside ``src/pscl`` (docs/architecture.md, "Floors").

Every module is parsed with :mod:`ast` (nothing is imported), so the test sees every ``pscl``
import: at module level, inside functions (the lazy imports), under ``if TYPE_CHECKING``, relative
or absolute. Each sub-package and top-level module sits on a floor (``FLOORS``, the table of
docs/architecture.md); a module may import from a lower floor, from its own package, and from
another package of its own floor only where ``ALLOWED_SIDEWAYS`` says why. The package-level
graph has no cycle. Module-level cycles inside one package are not this test's business.

Shims are placed by what they are: ``pscl/train.py`` re-exports :mod:`pscl.training` for old
scripts and ``python -m pscl.train``, so it sits at the top beside ``cli``;
``pscl/predict/model.py`` re-exports :mod:`pscl.models.model_file` and is an ordinary downward
import of ``predict`` (floor 7 -> 5), so it needs no entry.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "pscl"

# sub-package or top-level module of src/pscl -> floor (docs/architecture.md). "__init__" is
# pscl/__init__.py itself (``import pscl`` / ``from pscl import __version__``).
FLOORS: dict[str, int] = {
    # 0, ground: the version, shared constants, errors and the one error path
    "__init__": 0,
    "constants": 0,
    "errors": 0,
    # 1, ground helpers: Dice from counts (uses IGNORE_INDEX), the allocator choice (exits with a user error)
    "dice": 1,
    "perf": 1,
    # 2, files: safe loading, hashes, atomic writes, the config allow-lists
    "integrity": 2,
    # 3, run folders: state markers, resume= (checks saved overrides with integrity), renamed keys
    "runs": 3,
    # 4, data: micrograph folders, splits, views; phase fractions and region statistics
    "data": 4,
    "quantify": 4,
    # 5, networks and maths
    "models": 5,
    "losses": 5,
    "metrics": 5,
    "contrastive": 5,
    # 6, Lightning modules, the probe, callbacks, checks
    "modules": 6,
    "probe": 6,
    "callbacks": 6,
    "checks": 6,
    # 7, capabilities that stand alone: pscl-embed, pscl-predict / pscl-export, pscl-report
    "embed": 7,
    "predict": 7,
    "reporting": 7,
    # 8, pscl-select (embeds a run's network with embed)
    "select": 8,
    # 9, pscl-train (data.labeled_ids=select:<strategy> hands select's chooser to the data module)
    "training": 9,
    # top: console entry points and the `pscl.train` shim
    "cli": 10,
    "train": 10,
}

FLOOR_NAMES = {0: "ground", 1: "ground helpers", 2: "files", 3: "run folders", 4: "data", 5: "networks and maths",
               6: "Lightning modules", 7: "stand-alone capabilities", 8: "selection", 9: "training", 10: "top"}

# (importing package, imported package) on the same floor -> why the tie is there. Empty: every
# tie between packages runs downward.
ALLOWED_SIDEWAYS: dict[tuple[str, str], str] = {}

# (importing module, imported module) that breaks the floors today, known and to be cut. Each
# entry is left out of the floor and cycle checks; test_known_upward_imports_still_exist fails
# once the import is gone, so the entry goes with it. Empty since training.app takes
# choose_allocator from perf instead of cli (issue 22).
UPWARD_TO_CUT: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    path: Path  # the importing file
    line: int
    module: str  # the importing module, e.g. pscl.training.app
    target: str  # the imported module (or name), e.g. pscl.cli

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(SRC.parent)}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where}: {self.module} imports {self.target}"


def unit_names(package: Path = PACKAGE) -> set[str]:
    """The sub-packages and top-level modules of ``package`` ("__init__" for the package itself)."""
    units = {path.stem for path in package.glob("*.py")}
    units |= {path.parent.name for path in package.glob("*/__init__.py")}
    return units


UNITS = unit_names()


def unit_of(dotted: str) -> str:
    """The sub-package or top-level module a ``pscl...`` name belongs to."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def pscl_imports(source: str, module: str, is_package: bool, path: Path = PACKAGE / "x.py",
                 units: set[str] = UNITS) -> list[Import]:
    """Every import of a ``pscl`` module in ``source`` (anywhere in the file), as :class:`Import`."""
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if origin == "pscl":  # from pscl import errors -> pscl.errors; from pscl import __version__ -> pscl
                targets = [f"pscl.{alias.name}" if alias.name in units - {"__init__"} else "pscl"
                           for alias in node.names]
            elif node.module is None and origin.startswith("pscl."):  # from . import x
                targets = [f"{origin}.{alias.name}" for alias in node.names]
            else:
                targets = [origin]
        for target in targets:
            if target == "pscl" or target.startswith("pscl."):
                found.append(Import(path, node.lineno, module, target))
    return found


def all_imports() -> list[Import]:
    imports = []
    for path in sorted(PACKAGE.rglob("*.py")):
        imports += pscl_imports(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py",
                                path)
    return imports


IMPORTS = all_imports()
# imports between two different units, less the known ties to be cut
CROSS = [imp for imp in IMPORTS if unit_of(imp.module) != unit_of(imp.target)]
CHECKED = [imp for imp in CROSS if (imp.module, imp.target) not in UPWARD_TO_CUT]


def floor_text(unit: str) -> str:
    floor = FLOORS[unit]
    return f"{unit!r} (floor {floor}, {FLOOR_NAMES.get(floor, '?')})"


def test_the_parser_sees_every_kind_of_import():
    source = (
        "import os\n"
        "import pscl\n"
        "import pscl.data.io as io\n"
        "from pscl import errors, __version__\n"
        "from pscl.models.base import SegmentationBackbone\n"
        "from . import sibling\n"
        "from ..runs import state\n"
        "from .. import constants\n"
        "def f():\n"
        "    from pscl.select.choose import choose\n"
        "    if True:\n"
        "        import pscl.cli\n"
    )
    found = sorted((imp.line, imp.target) for imp in pscl_imports(source, "pscl.training.app", is_package=False))
    assert found == [(2, "pscl"), (3, "pscl.data.io"), (4, "pscl"), (4, "pscl.errors"), (5, "pscl.models.base"),
                     (6, "pscl.training.sibling"), (7, "pscl.runs"), (8, "pscl.constants"),
                     (10, "pscl.select.choose"), (12, "pscl.cli")]
    # a package's own __init__ is the base of its relative imports
    assert [imp.target for imp in pscl_imports("from .base import X\n", "pscl.models", is_package=True)] == [
        "pscl.models.base"]
    # and the lazy import of cli.train is seen in the real tree
    assert any(imp.module == "pscl.cli" and imp.target.startswith("pscl.training") for imp in IMPORTS)


def test_every_package_and_top_level_module_has_a_floor():
    missing = sorted(UNITS - set(FLOORS))
    assert not missing, (
        f"src/pscl has {missing} but FLOORS in {Path(__file__).name} does not place them: give each a floor "
        "(and a row in docs/architecture.md)")
    stale = sorted(set(FLOORS) - UNITS)
    assert not stale, f"FLOORS places {stale}, which src/pscl no longer has: remove them"
    unknown = [f"{imp} (no such package or module in src/pscl)" for imp in IMPORTS if unit_of(imp.target) not in FLOORS]
    assert not unknown, "\n".join(unknown)


def test_no_import_goes_up_a_floor():
    upward = [f"{imp}: {floor_text(unit_of(imp.module))} imports from {floor_text(unit_of(imp.target))}, a higher floor"
              for imp in CHECKED if FLOORS[unit_of(imp.target)] > FLOORS[unit_of(imp.module)]]
    assert not upward, "imports must run downward (docs/architecture.md):\n" + "\n".join(upward)


def test_sideways_imports_are_listed_with_a_reason():
    sideways = [f"{imp}: {floor_text(unit_of(imp.module))} and {unit_of(imp.target)!r} share a floor; "
                f"add ({unit_of(imp.module)!r}, {unit_of(imp.target)!r}) to ALLOWED_SIDEWAYS with a reason, or "
                "move the code down"
                for imp in CHECKED
                if FLOORS[unit_of(imp.target)] == FLOORS[unit_of(imp.module)]
                and (unit_of(imp.module), unit_of(imp.target)) not in ALLOWED_SIDEWAYS]
    assert not sideways, "imports between two packages of one floor:\n" + "\n".join(sideways)


def test_the_allow_lists_are_not_stale():
    used = {(unit_of(imp.module), unit_of(imp.target)) for imp in CHECKED}
    for (importer, imported), reason in ALLOWED_SIDEWAYS.items():
        assert reason.strip(), f"ALLOWED_SIDEWAYS[({importer!r}, {imported!r})] needs a reason"
        assert FLOORS[importer] == FLOORS[imported], (
            f"ALLOWED_SIDEWAYS lists ({importer!r}, {imported!r}), but {floor_text(importer)} and "
            f"{floor_text(imported)} are on different floors: remove the entry")
        assert (importer, imported) in used, (
            f"ALLOWED_SIDEWAYS lists ({importer!r}, {imported!r}), but no module of pscl.{importer} imports "
            f"pscl.{imported} any more: remove the entry")


def test_known_upward_imports_still_exist():
    present = {(imp.module, imp.target) for imp in CROSS}
    for (module, target), reason in UPWARD_TO_CUT.items():
        assert reason.strip(), f"UPWARD_TO_CUT[({module!r}, {target!r})] needs a reason"
        assert (module, target) in present, (
            f"UPWARD_TO_CUT lists {module} importing {target} ({reason}), but the import is gone: remove the entry")


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (node -> successors), largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(set(graph) | {s for successors in graph.values() for s in successors}):
        if node not in index:
            visit(node)
    return sorted(components, key=len, reverse=True)


def test_tarjan_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert strongly_connected(graph)[0] == ["a", "b", "c"]
    assert ["d"] in strongly_connected(graph)


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    examples: dict[tuple[str, str], Import] = {}
    for imp in CHECKED:
        edge = (unit_of(imp.module), unit_of(imp.target))
        graph[edge[0]].add(edge[1])
        examples.setdefault(edge, imp)
    cycles = [component for component in strongly_connected(graph) if len(component) > 1]
    messages = []
    for component in cycles:
        edges = [f"  {examples[(a, b)]}" for a in component for b in sorted(graph[a]) if b in component]
        messages.append(f"import cycle among {', '.join(component)}, through:\n" + "\n".join(edges))
    assert not cycles, "\n".join(messages)

