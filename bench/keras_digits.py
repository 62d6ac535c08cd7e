"""Converted models recover like native ones: a Keras CNN (via tf2onnx) beside PyTorch
exports, pruned to 75% fewer MACs and fine-tuned 5 epochs by the same job spec.

The Keras model is a plain CNN with L1/L2 kernel regularisers, BatchNormalization,
ReLU6 and dropout, trained on scikit-learn's digits (8x8 upsampled to 16x16), exported
by tf2onnx: an NHWC input with a Transpose, convolutions without bias followed by the
inference-mode batch norm as per-channel Mul/Add, Clip(0, 6). TensorFlow lives in a
virtualenv of its own (`--tf-python`); this script runs it for the Keras part and runs
everything else, the engine included, with the interpreter that started it:

    python3.11 -m venv tfenv && tfenv/bin/pip install tensorflow-cpu tf2onnx scikit-learn
    .venv/bin/python bench/keras_digits.py --tf-python tfenv/bin/python

Beside it, two PyTorch exports under the same job: the same CNN built in PyTorch (NCHW,
its BatchNorm folded into the convolutions by the exporter) and the digits ResNet of
`bench/engine.py`. It prints, for each, the original's and the final model's accuracy on
the test samples (never trained on) and on the job's held-back part, side by side.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIZE = 16
MACS_REDUCTION = 0.75
EPOCHS = 5
WIDTHS = (32, 32, 64, 64, 128)  # pooled after the second and fourth convolutions


# --- the Keras part: run with the TensorFlow interpreter (imports no torch) -----------------


def _keras_model(keras):  # noqa: ANN001, ANN202
    reg = keras.regularizers.L1L2(l1=1e-5, l2=1e-4)
    inputs = keras.Input((SIZE, SIZE, 1), name="input")
    x = inputs
    for i, width in enumerate(WIDTHS):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_regularizer=reg)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU(max_value=6.0)(x)
        if i in (1, 3):
            x = keras.layers.MaxPooling2D()(x)
            x = keras.layers.Dropout(0.25)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(10, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs)


def _keep_norm_ops(tf2onnx):  # noqa: ANN001, ANN202
    """Make tf2onnx leave each batch norm as a per-channel Mul and Add after a bias-free
    Conv, as the issue's export had it; returns a function that undoes the change.

    Two steps fold them into the convolutions otherwise: grappler's constant folding,
    and tf2onnx's transpose optimizer, which merges `Conv -> Transpose -> Mul(x, c)` and
    `... -> Add` into the Conv. Here grappler is skipped and each Mul with its constant
    is given to the optimizer as `Mul(c, x)` (the same product, a form it does not merge),
    each Add after a Conv handled like any other per-channel Add.
    """
    from tf2onnx import tf_loader
    from tf2onnx.optimizer.transpose_optimizer import TransposeOptimizer

    grappler = tf_loader.tf_optimize_grappler
    mul, add = TransposeOptimizer._mul_handler, TransposeOptimizer._add_handler

    def no_grappler(inputs, outputs, graph_def):  # noqa: ANN001, ANN202
        return graph_def

    def mul_const_first(self, trans, node):  # noqa: ANN001, ANN202
        if (
            trans.inputs[0].type == "Conv"
            and node.inputs[1].is_const()
            and node.input[0] == trans.output[0]
        ):
            x, c = node.input
            self._g.replace_input(node, x, c, 0)
            self._g.replace_input(node, c, x, 1)
        return mul(self, trans, node)

    def add_unmerged(self, trans, node):  # noqa: ANN001, ANN202
        if trans.inputs[0].type == "Conv":
            return self._handle_node_having_branches(trans, node)
        return add(self, trans, node)

    tf_loader.tf_optimize_grappler = no_grappler
    TransposeOptimizer._mul_handler, TransposeOptimizer._add_handler = mul_const_first, add_unmerged

    def restore() -> None:
        tf_loader.tf_optimize_grappler = grappler
        TransposeOptimizer._mul_handler, TransposeOptimizer._add_handler = mul, add

    return restore


def keras_train(work: Path, epochs: int, seed: int, keep_norm_ops: bool) -> None:
    """Train the Keras CNN on work/digits.npz and write work/keras.onnx (NHWC input)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf2onnx
    from tensorflow import keras

    keras.utils.set_random_seed(seed)
    data = np.load(work / "digits.npz")
    x_tr = np.moveaxis(data["x_tr"], 1, -1)  # NCHW -> NHWC
    x_te = np.moveaxis(data["x_te"], 1, -1)
    saved = work / "keras.keras"
    if saved.exists():
        model = keras.models.load_model(saved)
    else:
        model = _keras_model(keras)
        steps = epochs * int(np.ceil(len(x_tr) / 64))
        schedule = keras.optimizers.schedules.CosineDecay(3e-3, steps)
        model.compile(
            optimizer=keras.optimizers.Adam(schedule),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(x_tr, data["y_tr"], batch_size=64, epochs=epochs, verbose=0, shuffle=True)
        model.save(saved)
    logits = model.predict(x_te, verbose=0)
    acc = float((logits.argmax(1) == data["y_te"]).mean())
    print(f"keras: test accuracy {100 * acc:.2f}%", flush=True)

    @tf.function(input_signature=[tf.TensorSpec((None, SIZE, SIZE, 1), tf.float32, "input")])
    def serve(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    restore = _keep_norm_ops(tf2onnx) if keep_norm_ops else (lambda: None)
    try:
        tf2onnx.convert.from_function(
            serve,
            input_signature=serve.input_signature,
            opset=17,
            output_path=str(work / "keras.onnx"),
        )
    finally:
        restore()


# --- the engine part: run with the project's interpreter ------------------------------------


def build_keras_onnx(
    work: Path, tf_python: str | None, *, epochs: int, seed: int, fold_norms: bool = False
) -> Path:
    """work/keras.onnx: the Keras CNN trained on work/digits.npz by TensorFlow's own
    interpreter (`keras_train`); kept when it is already there."""
    keras_onnx = work / "keras.onnx"
    if not keras_onnx.exists():
        if not tf_python:
            raise SystemExit("--tf-python is needed to build the Keras model")
        cmd = [tf_python, __file__, "--keras-train", "--work", str(work)]
        cmd += ["--epochs", str(epochs), "--seed", str(seed)]
        cmd += ["--fold-norms"] if fold_norms else []
        subprocess.run(cmd, check=True)
    return keras_onnx


def _torch_twin():  # noqa: ANN202
    """The Keras CNN's layers in PyTorch (dropout included), for a native export."""
    from torch import nn

    layers: list[nn.Module] = []
    cin = 1
    for i, width in enumerate(WIDTHS):
        layers += [nn.Conv2d(cin, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6()]
        if i in (1, 3):
            layers += [nn.MaxPool2d(2), nn.Dropout(0.25)]
        cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


def _torch_original(path: Path, build, x_tr, y_tr, args: argparse.Namespace) -> Path:  # noqa: ANN001
    """Train and export a PyTorch original, or reuse the export already in the work dir."""
    if path.exists():
        return path
    import torch
    from _common import export_onnx_file, train

    torch.manual_seed(args.seed)
    model = train(build(), x_tr, y_tr, epochs=args.torch_epochs, seed=args.seed)
    return export_onnx_file(model, path, (1, *x_tr.shape[1:]))


def _graph_summary(path: Path) -> str:
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    counts = {op: ops.count(op) for op in dict.fromkeys(ops)}
    return ", ".join(f"{op} x{n}" for op, n in counts.items())


def _run(name: str, model: Path, npz: Path, x_te, y_te, work: Path, seed: int) -> dict:  # noqa: ANN001
    from _common import accuracy_onnx

    from contract import BenchmarkSpec, FinetuneSpec, JobSpec, PruneSpec, Target
    from worker.engine.pipeline import run_pipeline

    spec = JobSpec(
        prune=PruneSpec(target=Target(macs_reduction=MACS_REDUCTION)),
        finetune=FinetuneSpec(epochs=EPOCHS),
        benchmark=BenchmarkSpec(providers=["cpu"], warmup=1, iterations=5),
    )
    start = time.perf_counter()
    result = run_pipeline(model, spec, work / f"{name}-out", dataset_path=npz)
    wall = time.perf_counter() - start
    report = result.report
    return {
        "name": name,
        "test_before": accuracy_onnx(model, x_te, y_te),
        "test_after": accuracy_onnx(result.artifacts["model.onnx"], x_te, y_te),
        "val_before": report.original.accuracy,
        "val_after": report.pruned.accuracy,
        "macs_cut": 1 - report.pruned.macs / report.original.macs,
        "seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf-python", help="interpreter with tensorflow and tf2onnx")
    parser.add_argument("--work", type=Path, help="keep files here (default: a temp dir)")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs of the Keras CNN")
    parser.add_argument(
        "--torch-epochs", type=int, default=12, help="training epochs of the PyTorch models"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="keras,twin,resnet", help="models to run")
    parser.add_argument(
        "--fold-norms", action="store_true", help="let tf2onnx fold batch norms into convs"
    )
    parser.add_argument("--keras-train", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keras_train:  # the TensorFlow side, started by the engine side below
        keras_train(args.work, args.epochs, args.seed, not args.fold_norms)
        return
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="secateurs-keras-") as tmp:
            _bench(args, Path(tmp))
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        _bench(args, args.work)


def _bench(args: argparse.Namespace, work: Path) -> None:
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    from _common import SmallResNet, digits

    only = set(args.only.split(","))
    x_tr, y_tr, x_te, y_te = digits(size=SIZE, seed=args.seed)
    np.savez(work / "digits.npz", x_tr=x_tr, y_tr=y_tr, x_te=x_te, y_te=y_te)
    models: dict[str, tuple[Path, Path, np.ndarray]] = {}
    if "keras" in only:
        keras_onnx = build_keras_onnx(
            work, args.tf_python, epochs=args.epochs, seed=args.seed, fold_norms=args.fold_norms
        )
        nhwc_te = np.ascontiguousarray(np.moveaxis(x_te, 1, -1))
        np.savez(work / "keras-train.npz", x=np.moveaxis(x_tr, 1, -1), y=y_tr)
        models["keras (tf2onnx)"] = (keras_onnx, work / "keras-train.npz", nhwc_te)
        print(f"keras.onnx: {_graph_summary(keras_onnx)}")
    np.savez(work / "train.npz", x=x_tr, y=y_tr)
    if "twin" in only:
        models["same CNN (torch)"] = (
            _torch_original(work / "twin.onnx", _torch_twin, x_tr, y_tr, args),
            work / "train.npz",
            x_te,
        )
    if "resnet" in only:
        models["resnet (torch)"] = (
            _torch_original(work / "resnet.onnx", lambda: SmallResNet(width=16), x_tr, y_tr, args),
            work / "train.npz",
            x_te,
        )
    rows = [
        _run(name.split()[0], model, npz, xt, y_te, work, args.seed) | {"name": name}
        for name, (model, npz, xt) in models.items()
    ]
    print(
        f"\n75% fewer MACs, {EPOCHS} fine-tuning epochs; test: {len(y_te)} samples never "
        "trained on; held-back: the job's own validation part"
    )
    print(
        f"{'model':<20}{'MACs cut':>9}{'test orig':>11}{'test final':>11}{'drop':>7}"
        f"{'held orig':>11}{'held final':>11}{'s':>6}"
    )
    for r in rows:
        drop = 100 * (r["test_before"] - r["test_after"])
        print(
            f"{r['name']:<20}{r['macs_cut']:>9.1%}{100 * r['test_before']:>10.2f}%"
            f"{100 * r['test_after']:>10.2f}%{drop:>7.2f}{100 * r['val_before']:>10.2f}%"
            f"{100 * r['val_after']:>10.2f}%{r['seconds']:>6.0f}"
        )


if __name__ == "__main__":
    main()
