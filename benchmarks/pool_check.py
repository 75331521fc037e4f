"""Benchmark: what the checks before training cost (pscl.data.image_checks and the cache key's hashes).

For a data folder (or the embedded synthetic data), times three things on the pretraining pool:
hashing every file (SHA-256, as the pretraining cache key does), the first pool check (decode
every image), and a second check (sizes remembered by content hash: hashing only).

Usage: ``python benchmarks/pool_check.py [--root FOLDER] [--crop 128] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="a data folder (default: the synthetic data)")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from pscl.data.image_checks import check_pool
    from pscl.data.datamodule import MicrographDataModule
    from pscl.integrity import hashing

    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch)
        if args.root is None:
            datamodule = MicrographDataModule(synthetic={}, cache_dir=Path("~/.cache/pscl").expanduser(),
                                              crop_size=args.crop)
        else:
            datamodule = MicrographDataModule(root=args.root, cache_dir=cache, crop_size=args.crop)
        datamodule.prepare_data()
        datamodule.setup("fit")
        pool = datamodule.pretraining_pool()
        size_mb = sum(p.stat().st_size for p in pool) / 2**20

        hashing._MEMO.clear()
        started = time.perf_counter()
        hashing.content_hashes(pool)
        hash_s = time.perf_counter() - started

        hashing._MEMO.clear()
        started = time.perf_counter()
        check_pool(pool, datamodule.in_channels, args.crop, cache / "first")
        first_s = time.perf_counter() - started

        hashing._MEMO.clear()
        started = time.perf_counter()
        check_pool(pool, datamodule.in_channels, args.crop, cache / "first")
        second_s = time.perf_counter() - started

    result = {"data": str(args.root or "synthetic"), "images": len(pool), "megabytes": round(size_mb, 1),
              "hash_s": round(hash_s, 3), "first_check_s": round(first_s, 3), "second_check_s": round(second_s, 3)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
