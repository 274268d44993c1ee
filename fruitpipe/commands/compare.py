"""``fruitpipe compare``: train, score and time every model variant the same way (:mod:`fruitpipe.compare`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import UsageError, command


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("results"),
                   help="folder for compare.json and compare.png (--quick: compare_quick.json, compare_quick.png)")
    p.add_argument("--quick", action="store_true",
                   help="a fast subset of the variants on small per-folder subsets of every set (CI)")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help="only these variants (default: all; --quick: the quick ones)")
    p.add_argument("--cache", type=Path, default=None,
                   help="embedding cache folder (default: the machine-wide cache of local retrains)")
    p.add_argument("--keep", type=Path, default=None, help="also keep every trained model under KEEP/<variant>/")


@command("compare", _compare_args)
def _compare(args: argparse.Namespace) -> int:
    """Compare the model variants (backbones, fine-tuning, a CNN from scratch) on the same splits."""
    from ..compare import CompareError, JSON_NAME, QUICK_JSON_NAME, run
    from ..joblog import quiet_native_stderr

    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is not a folder")
    try:
        with quiet_native_stderr():
            result = run(args.out, quick=args.quick, names=args.variants, cache_dir=args.cache, keep=args.keep)
    except CompareError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {args.out / (QUICK_JSON_NAME if args.quick else JSON_NAME)} "
          f"({len(result['variants'])} variants, {result['seconds']:.0f} s)")
    return 0
