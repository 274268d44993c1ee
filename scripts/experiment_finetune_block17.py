"""Does fine-tuning the backbone's block 17 win over a head on frozen features? Measured on ``val``.

Runs the training job's own fitting code (:func:`fruitpipe.finetune.fit`) on cached backbone outputs
of ``train`` (original + mirrored) and scores the exported numpy head + block on ``val`` (accuracy
of the head's top class; no rejection rule, ``test`` is not read). Per seed, in the same run:

* ``frozen``: stage 1 only (``finetune_epochs=0``): the head on the backbone's own block 17;
* ``finetuned_<E>``: stage 1, then block 17 + head for ``E`` epochs (``--finetune-epochs``).

Writes ``results/experiment_finetune_block17.json`` and prints a markdown table. About 2 minutes
per seed and setting on 2 cores.

    python scripts/experiment_finetune_block17.py [--seeds 0 1 2] [--finetune-epochs 4 8]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FRUITS = REPO.parent / "shared" / "data" / "fruits"


def outputs(backbone, split: str, views: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """The training job's inputs for ``split``: :class:`fruitpipe.finetune.Inputs` and class indices."""
    from fruitpipe.embeddings import EmbeddingCache, embed_folder
    from fruitpipe.finetune import Inputs
    from fruitpipe.labels import LABELS
    emb = embed_folder(FRUITS / split, backbone, EmbeddingCache(REPO / ".cache" / "embeddings"), views=views,
                       stage=f"embed_{split}", progress=False)
    parts = [Inputs(backbone.block_input(emb.block_in[v]), emb.views[v], emb.pooled[v]) for v in views]
    y = np.array([LABELS.index(label) for label in emb.labels])
    return Inputs(*(np.concatenate(a) for a in zip(*parts))), np.tile(y, len(views))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--finetune-epochs", type=int, nargs="+", default=[4, 8])
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from fruitpipe import finetune
    from fruitpipe.block import Block
    from fruitpipe.classifier import Backbone
    from fruitpipe.features import FINETUNED
    from fruitpipe.training import Config

    backbone = Backbone(None, num_threads=2)
    train, y = outputs(backbone, "train", ("orig", "flip"))
    val, y_val = outputs(backbone, "val", ("orig",))
    init = Block.from_backbone(backbone.path)
    base = Config(features=FINETUNED, hidden=128)  # 128: head + block must fit the 1 MB bundle
    settings = {"frozen": 0, **{f"finetuned_{e}": e for e in args.finetune_epochs}}
    result: dict[str, object] = {"config": {k: v for k, v in dataclasses.asdict(base).items() if k != "finetune_epochs"},
                                 "n_train": int(len(y)), "n_val": int(len(y_val)), "settings": {}}
    print("| setting | val accuracy per seed | mean | fit s (mean) |\n|---|---|---:|---:|")
    for name, epochs in settings.items():
        accs, secs = [], []
        for seed in args.seeds:
            cfg = dataclasses.replace(base, seed=seed, finetune_epochs=epochs)
            started = time.monotonic()
            with contextlib.redirect_stdout(io.StringIO()):  # the job's per-epoch lines
                head, block, _ = finetune.fit(train, y, cfg, init)
            secs.append(time.monotonic() - started)
            accs.append(float((head(val.head_input(block)).argmax(1) == y_val).mean()))
        result["settings"][name] = {"finetune_epochs": epochs, "seeds": args.seeds,  # type: ignore[index]
                                    "val_accuracy": accs, "mean": statistics.mean(accs), "fit_seconds": secs}
        print(f"| {name} | {' / '.join(f'{100 * a:.2f}%' for a in accs)} | {100 * statistics.mean(accs):.2f}% "
              f"| {statistics.mean(secs):.0f} |", flush=True)
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / "experiment_finetune_block17.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
