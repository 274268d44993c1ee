"""Experiment (not shipped): fine-tune the backbone's last inverted-residual block on our photos.

The shipped head sits on frozen int8 features and tops out at ~97.9% on ``val``. This script
measures whether training the backbone's block 17 (expand 1x1 160→960, depthwise 3x3, project
960→320; initialised from its dequantized int8 weights) together with the head wins on ``val``:

* inputs: the int8 backbone's outputs 167 (block 16, 7x7x160; block 17's input), 156 (14x14x96)
  and 172 (the 1280-d embedding), read once with LiteRT through ``fruitpipe.imaging.load_image``;
* model: block 17 in Keras → mean/max pool of its output (what tensor 170 is in the shipped
  recipe) ++ mean/max of 156 ++ the frozen embedding → batch norm → dropout 0.3 → dense (ReLU)
  → dropout 0.3 → softmax; label smoothing 0.1, L2 1e-3, Adam 1e-3, batch 128;
* the same model with block 17 frozen is the baseline, in the same run.

Trained on ``train`` (original + mirrored), scored on ``val``; ``test`` is not read. Writes
``results/experiment_finetune_block17.json``. About 10 minutes on 2 cores.

    python scripts/experiment_finetune_block17.py [--seeds 0 1] [--epochs 15] [--hidden 256]
"""

from __future__ import annotations

import argparse
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
BLOCK_INPUT, MAP_156, EMBEDDING = 167, 156, 172
# (kernel, bias) tensor indices of block 17 in the pinned backbone: expand, depthwise, project.
BLOCK17 = {"expand": (99, 100), "depthwise": (101, 102), "project": (103, 104)}


def read_outputs(split: str, flip: bool) -> dict[str, np.ndarray]:
    """Dequantized outputs 167, 156 and 172 for every photo of ``split``; labels as class indices."""
    from ai_edge_litert.interpreter import Interpreter

    from fruitpipe import backbone, imaging
    from fruitpipe.labels import LABELS
    model = backbone.embedding_model(backbone.resolve(None).read_bytes(), extra=(BLOCK_INPUT, MAP_156))
    it = Interpreter(model_content=model, num_threads=2)
    it.allocate_tensors()
    outs = {o["index"]: o for o in it.get_output_details()}
    files = sorted((FRUITS / split).glob("*/*.jpg"))
    got: dict[int, list[np.ndarray]] = {i: [] for i in outs}
    for path in files:
        img = imaging.load_image(path.read_bytes())
        it.set_tensor(it.get_input_details()[0]["index"], (img[:, ::-1] if flip else img)[None].copy())
        it.invoke()
        for i, o in outs.items():
            scale, zero = o["quantization"]
            got[i].append((it.get_tensor(i)[0].astype(np.float32) - zero) * scale)
    return {"block_input": np.stack(got[BLOCK_INPUT]), "m156": np.stack(got[MAP_156]),
            "embedding": np.stack(got[EMBEDDING]).reshape(len(files), -1),
            "y": np.array([LABELS.index(p.parent.name) for p in files])}


def block17_weights() -> dict[str, list[np.ndarray]]:
    """Block 17's float weights in Keras layout, dequantized from the int8 backbone."""
    from ai_edge_litert.interpreter import Interpreter

    from fruitpipe import backbone
    it = Interpreter(model_path=str(backbone.resolve(None)))
    it.allocate_tensors()
    details = {d["index"]: d for d in it.get_tensor_details()}

    def deq(index: int) -> np.ndarray:
        q = details[index]["quantization_parameters"]
        values = it.get_tensor(index).astype(np.float32)
        shape = [1] * values.ndim
        shape[q["quantized_dimension"]] = -1
        return (values - q["zero_points"].reshape(shape)) * q["scales"].reshape(shape)

    for name, (kernel, _) in BLOCK17.items():
        assert f"expanded_conv_17/{name}" in details[kernel]["name"], details[kernel]["name"]
    (ek, eb), (dk, db), (pk, pb) = ((deq(k), deq(b)) for k, b in BLOCK17.values())
    return {"expand": [ek[:, 0, 0, :].T[None, None], eb], "depthwise": [dk[0][:, :, :, None], db],
            "project": [pk[:, 0, 0, :].T[None, None], pb]}


def build(weights: dict[str, list[np.ndarray]], train_block: bool, hidden: int, seed: int):  # type: ignore[no-untyped-def]
    import keras
    keras.utils.set_random_seed(seed)
    block_in, m156, emb = keras.Input((7, 7, 160)), keras.Input((14, 14, 96)), keras.Input((1280,))
    layers = {"expand": keras.layers.Conv2D(960, 1), "depthwise": keras.layers.DepthwiseConv2D(3, padding="same"),
              "project": keras.layers.Conv2D(320, 1)}
    x = keras.layers.ReLU(6.0)(layers["expand"](block_in))
    x = layers["project"](keras.layers.ReLU(6.0)(layers["depthwise"](x)))
    pools = [emb]
    for t in (x, m156):
        pools += [keras.layers.GlobalAveragePooling2D()(t), keras.layers.GlobalMaxPooling2D()(t)]
    reg = keras.regularizers.l2(1e-3)
    h = keras.layers.Dropout(0.3)(keras.layers.BatchNormalization()(keras.layers.Concatenate()(pools)))
    h = keras.layers.Dropout(0.3)(keras.layers.Dense(hidden, activation="relu", kernel_regularizer=reg)(h))
    model = keras.Model([block_in, m156, emb], keras.layers.Dense(6, activation="softmax", kernel_regularizer=reg)(h))
    for name, layer in layers.items():
        layer.set_weights(weights[name])
        layer.trainable = train_block
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    train = [read_outputs("train", flip) for flip in (False, True)]
    x_tr = [np.concatenate([t[k] for t in train]) for k in ("block_input", "m156", "embedding")]
    y_tr = keras.utils.to_categorical(np.concatenate([t["y"] for t in train]), 6)
    val = read_outputs("val", False)
    x_val = [val["block_input"], val["m156"], val["embedding"]]
    weights = block17_weights()
    result: dict[str, object] = {"epochs": args.epochs, "hidden": args.hidden, "n_train": len(y_tr),
                                 "n_val": len(val["y"])}
    for name, train_block in (("block17_frozen", False), ("block17_finetuned", True)):
        accs, secs = [], []
        for seed in args.seeds:
            model = build(weights, train_block, args.hidden, seed)
            started = time.monotonic()
            model.fit(x_tr, y_tr, epochs=args.epochs, batch_size=128, verbose=0)
            secs.append(time.monotonic() - started)
            accs.append(float((model.predict(x_val, verbose=0, batch_size=256).argmax(1) == val["y"]).mean()))
        result[name] = {"val_accuracy": accs, "mean": statistics.mean(accs), "fit_seconds": secs}
        print(f"| {name} | {' / '.join(f'{100 * a:.2f}%' for a in accs)} | {100 * statistics.mean(accs):.2f}% "
              f"| {statistics.mean(secs):.0f} s |", flush=True)
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / "experiment_finetune_block17.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
