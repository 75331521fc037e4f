"""``make gpu-check``: everything pscl should do on an NVIDIA GPU, in one command, in minutes.

For a machine with a GPU and a recent PyTorch already installed, possibly offline. Parts, each
with its own time limit; a part that fails or runs out of time is recorded and the next one
still runs:

1. ``environment`` - Python, torch, CUDA, the GPU;
2. ``install``     - ``pip install --no-deps -e .``, then pscl's missing dependencies from a local
   wheel folder (``--wheels``, filled elsewhere by ``make wheels PY=3.x``) without the network;
3. ``tests``       - ``pytest -m gpu``: CUDA equals the CPU, and a ``fast_dev_run`` of every method;
4. ``bench``       - ``benchmarks/pretrain_step.py --device cuda --precision fp32,bf16``;
5. ``paper``       - ``experiment=paper_pscl_simclr data=nasa_superalloy`` for supervised and
   PSCL-SimCLR, as many rounds as the rest of the budget allows.

It writes ``<out>/summary.json`` and ``<out>/summary.md`` (status, seconds and the output's tail
of every part). ``--dry-run`` prints each command and replaces it with a check that its program
exists, so the control flow is tested on any machine (``tests/benchmarks/test_gpu_check.py``).

Usage: ``python benchmarks/gpu_check.py [--budget-s 480] [--wheels wheels] [--out gpu_check] [--dry-run]``
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("environment", "install", "tests", "bench", "paper")
# each part's share of the budget (the paper runs get what the others leave)
LIMITS_S = {"environment": 30, "install": 90, "tests": 150, "bench": 120}
_ENVIRONMENT = ("import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__); "
                "print('cuda', torch.version.cuda, 'available', torch.cuda.is_available()); "
                "print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')")


@dataclass
class PartResult:
    """What one part did."""

    name: str
    status: str  # ok | failed | timeout | skipped | dry-run
    seconds: float = 0.0
    commands: list[str] = field(default_factory=list)
    tail: str = ""


def requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """pscl's direct dependencies that are not installed (torch and torchvision excepted)."""
    import importlib.metadata
    import re
    import tomllib

    wanted = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    chosen = []
    for requirement in wanted:
        if ";" in requirement:  # environment markers: let pip decide
            requirement = requirement.split(";")[0].strip()
        name = re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0]
        if name in ("torch", "torchvision"):
            continue
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            chosen.append(requirement)
    return chosen


# what the GPU machine's own PyTorch provides
_TORCH_STACK = {"torch", "torchvision", "triton"}
_TORCH_STACK_PREFIXES = ("nvidia-", "cuda-")


def pinned_wheels(constraints: Path = ROOT / "requirements" / "constraints.txt") -> list[str]:
    """Every tested, pinned dependency except the PyTorch stack, plus the build tools an sdist needs
    offline: what ``make wheels`` downloads (``pip download --no-deps``)."""
    pins = [line.strip() for line in constraints.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    names = [p.split("==")[0].strip().lower() for p in pins]
    kept = [p for p, n in zip(pins, names) if n not in _TORCH_STACK and not n.startswith(_TORCH_STACK_PREFIXES)]
    return kept + ["setuptools", "wheel"]


def part_commands(name: str, args: argparse.Namespace, seconds_left: float) -> list[list[str]]:
    """The commands of one part."""
    python = sys.executable
    out = args.out.resolve()
    if name == "environment":
        return [[python, "-c", _ENVIRONMENT]]
    if name == "install":
        commands = [[python, "-m", "pip", "install", "--no-deps", "-e", str(ROOT)]]
        missing = requirements()
        if missing:
            commands.append([python, "-m", "pip", "install", "--no-index", "--find-links", str(args.wheels), *missing])
        return commands
    if name == "tests":
        return [[python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")]]
    if name == "bench":
        return [[python, str(ROOT / "benchmarks" / "pretrain_step.py"), "--device", "cuda", "--precision",
                 "fp32,bf16", "--configs", "paper,quick", "--steps", "5", "--json", str(out / "bench.json")]]
    if name == "paper":
        # supervised and PSCL-SimCLR alternate by round, so a cut-off budget still pairs them
        seeds = ",".join(str(s) for s in range(5))
        return [[python, "-m", "pscl.train", "-m", "experiment=paper_pscl_simclr", "data=nasa_superalloy",
                 f"data.root={args.nasa}", "data.num_workers=4", f"data.label_seed={seeds}",
                 "method=supervised,pscl_simclr", f"hydra.sweep.dir={out / 'paper_runs'}"]]
    raise ValueError(name)


def run_part(name: str, commands: list[list[str]], limit_s: float, dry_run: bool, fail: bool) -> PartResult:
    """Run one part's commands under one time limit; never raises."""
    result = PartResult(name, "ok", commands=[shlex.join(c) for c in commands])
    started = time.monotonic()
    output: list[str] = []
    for command in commands:
        if dry_run:
            program = command[1] if command[0] == sys.executable and command[1].endswith(".py") else command[0]
            check = f"import os, sys; sys.exit(0 if os.path.exists({program!r}) else 1)"
            command = [sys.executable, "-c", check]
        if fail:
            command = [sys.executable, "-c", "import sys; print('made to fail'); sys.exit(1)"]
        remaining = limit_s - (time.monotonic() - started)
        if remaining <= 0:
            result.status = "timeout"
            break
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=remaining, cwd=ROOT)
        except subprocess.TimeoutExpired as exc:
            output.append((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes)
                          else (exc.stdout or ""))
            result.status = "timeout"
            break
        output.append(done.stdout + done.stderr)
        if done.returncode != 0:
            result.status = "failed"
            break
    if dry_run and result.status == "ok":
        result.status = "dry-run"
    result.seconds = round(time.monotonic() - started, 1)
    result.tail = "".join(output)[-3000:]
    return result


def write_summary(out: Path, results: list[PartResult], budget_s: float) -> None:
    """``summary.json`` and ``summary.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    total = round(sum(r.seconds for r in results), 1)
    (out / "summary.json").write_text(json.dumps({"budget_s": budget_s, "seconds": total,
                                                  "parts": [asdict(r) for r in results]}, indent=2))
    lines = [f"# pscl GPU check ({total} s of a {budget_s:.0f} s budget)", "",
             "| part | status | seconds |", "|---|---|---:|"]
    lines += [f"| {r.name} | {r.status} | {r.seconds} |" for r in results]
    for r in results:
        lines += ["", f"## {r.name}: {r.status}", "", *[f"    {c}" for c in r.commands], "", "```",
                  r.tail.strip()[-1500:], "```"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=480, help="time for all parts together (default 480)")
    parser.add_argument("--wheels", type=Path, default=ROOT / "wheels", help="folder of wheels for offline installs")
    parser.add_argument("--nasa", type=Path, default=ROOT.parent / "shared" / "data" / "nasa_superalloy")
    parser.add_argument("--out", type=Path, default=ROOT / "gpu_check")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--dry-run", action="store_true", help="print the commands; only check their programs exist")
    parser.add_argument("--fail", default="", help=argparse.SUPPRESS)  # tests: make these parts fail
    parser.add_argument("--list-requirements", action="store_true",
                        help="print the pinned dependencies make wheels downloads, one per line")
    args = parser.parse_args(argv)
    if args.list_requirements:
        print("\n".join(pinned_wheels()))
        return 0
    started = time.monotonic()
    results = []
    for name in args.parts.split(","):
        left = args.budget_s - (time.monotonic() - started)
        if left <= 5:
            results.append(PartResult(name, "skipped"))
            continue
        limit = min(LIMITS_S.get(name, left), left)
        commands = part_commands(name, args, left)
        if args.dry_run:
            print(f"[{name}] ({limit:.0f} s)\n  " + "\n  ".join(shlex.join(c) for c in commands), flush=True)
        result = run_part(name, commands, limit, args.dry_run, name in args.fail.split(","))
        print(f"{name}: {result.status} in {result.seconds} s", flush=True)
        results.append(result)
    write_summary(args.out, results, args.budget_s)
    print(f"summary: {args.out / 'summary.md'}")
    return 0 if all(r.status in ("ok", "dry-run") for r in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main())
