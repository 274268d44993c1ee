"""Head selection on ``val`` with a head trained on ``train`` only (docs/ml.md, "Head selection").

Reads the embedding cache (fills it if needed) and prints the validation accuracy of the head
alone (no rejection) and the float16 head size for each hidden size / feature recipe / seed:

    python scripts/tune_head.py --hidden 128 192 256 --features emb emb+170mm+156mm --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "fruits")
    p.add_argument("--cache", type=Path, default=REPO / ".cache" / "embeddings")
    p.add_argument("--hidden", type=int, nargs="+", default=[192])
    p.add_argument("--features", nargs="+", default=["emb+170mm+156mm"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args()
    import contextlib

    from fruitpipe.classifier import Backbone
    from fruitpipe.embeddings import EmbeddingCache, embed_folder
    from fruitpipe.features import head_input
    from fruitpipe.labels import LABELS
    from fruitpipe.training import Config, fit_head

    backbone = Backbone(None, num_threads=2)
    cache = EmbeddingCache(args.cache)
    tr = embed_folder(args.data / "train", backbone, cache, views=("orig", "flip"), progress=False)
    va = embed_folder(args.data / "val", backbone, cache, views=("orig",), progress=False)
    cache.flush()
    y_tr = np.array([LABELS.index(l) for l in tr.labels] * 2)
    y_va = np.array([LABELS.index(l) for l in va.labels])
    print("| features | hidden | seed | val accuracy (head alone) | head.npz bytes (float16) |\n|---|---:|---:|---:|---:|")
    for recipe in args.features:
        x_tr = np.concatenate([head_input(recipe, tr.views[v], tr.pooled[v]) for v in ("orig", "flip")])
        x_va = head_input(recipe, va.views["orig"], va.pooled["orig"])
        for hidden in args.hidden:
            for seed in args.seeds:
                with contextlib.redirect_stdout(io.StringIO()):
                    head, _, _ = fit_head(x_tr, y_tr, Config(hidden=hidden, seed=seed, features=recipe))
                acc = float((head(x_va).argmax(1) == y_va).mean())
                buf = io.BytesIO()
                np.savez_compressed(buf, *[k.astype(np.float16) for k in head.kernels], *head.biases)
                print(f"| {recipe} | {hidden} | {seed} | {acc:.4f} | {len(buf.getvalue())} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
