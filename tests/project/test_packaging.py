"""pyproject.toml's explicit package list (``[tool.setuptools] packages``) matches the package tree.

The list is explicit because ``pscl.conf`` is mapped from ``conf/``, outside ``src/``; a sub-package
missing from it would be left out of a wheel (and of a non-editable install) without a word, and a
listed one that no longer exists breaks the build.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def subpackages(src: Path = SRC) -> set[str]:
    """``pscl`` and every ``pscl.<...>`` whose folder under ``src/pscl`` holds an ``__init__.py``."""
    return {".".join(init.parent.relative_to(src).parts) for init in (src / "pscl").rglob("__init__.py")}


def package_folder(name: str, package_dir: Mapping[str, str]) -> Path:
    """The folder setuptools reads package ``name`` from: its longest prefix in ``package-dir``."""
    parts = name.split(".")
    for cut in range(len(parts), -1, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return REPO.joinpath(package_dir[prefix], *parts[cut:])
    return REPO.joinpath(*parts)


def unlisted(listed: Iterable[str]) -> list[str]:
    """The packages of the tree (and ``pscl.conf``) that ``listed`` leaves out."""
    return sorted((subpackages() | {"pscl.conf"}) - set(listed))


def absent(listed: Iterable[str], package_dir: Mapping[str, str]) -> list[str]:
    """The names in ``listed`` whose folder has no ``__init__.py``."""
    return sorted(name for name in listed if not (package_folder(name, package_dir) / "__init__.py").is_file())


def test_pyproject_lists_every_subpackage() -> None:
    missing = unlisted(SETUPTOOLS["packages"])
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"


def test_every_listed_package_exists() -> None:
    assert SETUPTOOLS["package-dir"]["pscl.conf"] == "conf"
    gone = absent(SETUPTOOLS["packages"], SETUPTOOLS["package-dir"])
    assert not gone, f"[tool.setuptools] packages in pyproject.toml lists {gone}, which have no __init__.py"
    assert len(set(SETUPTOOLS["packages"])) == len(SETUPTOOLS["packages"]), "a package is listed twice"
