"""Write the generated not-fruit images of one group (or both) into ``OUT/not_fruit/``.

The generator lives in :mod:`fruitpipe.ood` (the local server makes the same sets for its
retrains); this is its command line.

    python scripts/make_ood_set.py --out /tmp/ood-calib --group calib
    python scripts/make_ood_set.py --out /tmp/ood-heldout --group heldout
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fruitpipe import ood  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder; images go to OUT/not_fruit/")
    parser.add_argument("--group", choices=[*ood.GROUPS, "all"], default="all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    groups = list(ood.GROUPS) if args.group == "all" else [args.group]
    n = sum(ood.write(args.out / "not_fruit", group, args.seed) for group in groups)
    print(f"wrote {n} images to {args.out / 'not_fruit'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
