"""``python -m jef.data.bundled [SOURCE_DIR] [--out PATH] [--seed N]``: rebuild the bundled data set."""

from __future__ import annotations

import argparse
import hashlib
import sys

from jef.data.bundled import BUNDLED_PATH, DEBIAN_DIR, SEED, load_bundle
from jef.data.bundled.build import build_bundle


def main(argv: list[str] | None = None) -> int:
    """Rebuild ``fashion_mnist_mini.npz`` and print its size, class counts and SHA-256."""
    parser = argparse.ArgumentParser(prog="python -m jef.data.bundled", description=__doc__)
    parser.add_argument("source_dir", nargs="?", default=str(DEBIAN_DIR),
                        help="directory of the Fashion-MNIST IDX files (default: %(default)s)")
    parser.add_argument("--out", default=str(BUNDLED_PATH), help="archive to write (default: the bundled one)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the stratified draw (default: %(default)s)")
    args = parser.parse_args(argv)
    path = build_bundle(args.source_dir, args.out, seed=args.seed)
    arrays = load_bundle(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, sha256 {digest})")
    for split in ("train", "test"):
        counts = [int((arrays[f"y_{split}"] == c).sum()) for c in range(10)]
        print(f"  {split}: {arrays[f'x_{split}'].shape}, per class {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
