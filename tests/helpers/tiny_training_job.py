"""A small, real training job for the retrain tests (the ML helper's job is the production one).

Same command-line contract as ``fruitpipe train`` (``--data --out [--validation] [--cache]``), same
progress lines, same bundle format. It embeds the images with the real backbone and fits a
softmax head with a few hundred steps of gradient descent in numpy, starting from ``--init``'s
head (a warm start), so it runs in seconds. ``--mode`` picks what the test needs:

* ``good``: learn the real labels → the gate accepts it (no worse than the live model).
* ``bad``: learn deliberately wrong labels (each class mapped to the next) → the gate rejects it.
* ``crash``: print some progress and exit 3 before writing anything.
* ``garbage``: exit 0 after writing a bundle folder whose files do not match its manifest.

The real training job is covered end to end by tests/test_e2e_local_loop.py; this one only keeps
the gate / failure bookkeeping tests fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from fruitpipe import bundle, imaging
from fruitpipe.classifier import Classifier
from fruitpipe.head import Head, softmax
from fruitpipe.labels import LABELS


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--validation", type=Path)
    p.add_argument("--cache", type=Path)
    p.add_argument("--hyperparameters", type=Path, help="accepted for the contract; unused")
    p.add_argument("--base-model", type=Path, help="accepted for the contract; unused")
    p.add_argument("--init", type=Path, required=True, help="bundle whose head and rejection rule to start from")
    p.add_argument("--mode", choices=["good", "bad", "crash", "garbage"], default="good")
    p.add_argument("--sleep", type=float, default=0.0, help="pause after embedding (concurrency tests)")
    args = p.parse_args()

    print("stage=load", flush=True)
    items = [(i, path) for i, label in enumerate(LABELS)
             for path in sorted((args.data / label).glob("*")) if path.is_file()]
    print(f"images={len(items)}", flush=True)
    print("progress=10", flush=True)
    if args.mode == "crash":
        print("stage=embed", flush=True)
        print("error: simulated out-of-memory in the training job", file=sys.stderr, flush=True)
        return 3
    if args.mode == "garbage":
        import shutil
        shutil.copytree(args.init, args.out)
        (args.out / "head.npz").write_bytes(b"not a head")
        return 0
    print("stage=embed", flush=True)
    # The head's input as the init bundle computes it (the serving code path).
    init_clf = Classifier(args.init)
    x = init_clf.head_input(*init_clf.backbone.outputs(
        np.stack([imaging.load_image(path.read_bytes()) for _, path in items])))
    y = np.array([i for i, _ in items])
    if args.mode == "bad":
        y = (y + 1) % len(LABELS)
    print("progress=50", flush=True)
    time.sleep(args.sleep)

    print("stage=fit", flush=True)
    init = bundle.verify(args.init)
    head = Head.load(args.init / init.head["file"], [l["activation"] for l in init.head["layers"]])
    # Keep every layer but the last as a fixed feature extractor and refit only the output layer.
    features = Head(head.kernels[:-1], head.biases[:-1], head.activations[:-1]) if len(head.kernels) > 1 else None
    if features is not None:
        x = features(x)
    w = head.kernels[-1].copy()
    b = head.biases[-1].copy()
    onehot = np.eye(w.shape[1], dtype=np.float32)[y]  # 6 outputs, or 7 with a not_fruit output (issue 11)
    lr = 0.05 if args.mode == "good" else 0.5
    steps = 200
    for step in range(steps):
        probs = softmax(x @ w + b)
        grad = (probs - onehot) / len(x)
        w -= lr * (x.T @ grad)
        b -= lr * grad.sum(axis=0)
        if step % 50 == 0:
            print(f"progress={50 + 45 * step // steps}", flush=True)
    acc = float(((x @ w + b).argmax(1) == y).mean())
    print(f"train_accuracy={acc:.4f}", flush=True)

    print("stage=write", flush=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    head_path = tmp.parent / (tmp.name + ".head.npz")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    Head(head.kernels[:-1] + (w,), head.biases[:-1] + (b,), head.activations).save(head_path)
    # Every other file of the init bundle (rejection prototypes, a fine-tuned block) is kept as is.
    files = {name: (args.init / name).read_bytes() for name in init.files if name != init.head["file"]}
    files["head.npz"] = head_path.read_bytes()
    head_path.unlink()
    raw = init.to_dict()
    raw["head"] = {**init.head, "dtype": "float32"}
    raw.update(version=bundle.new_version(salt=args.mode + str(time.time())), created=bundle.now_iso(),
               metrics={"train_accuracy": acc, "note": f"tiny test training job, mode {args.mode}"},
               training_data={"images": len(items)})
    manifest = bundle.Manifest.from_dict(raw)
    bundle.write(tmp, manifest, files)
    tmp.rename(args.out)  # all or nothing: never a partial bundle at --out
    (args.out.parent / "metrics.json").write_text(json.dumps({"train_accuracy": acc}))
    print("progress=100", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
