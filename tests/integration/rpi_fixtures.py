"""Real models and data for the rpi (TFLite) tests and bench/rpi_vs_onnx2tf.py.

Run INSIDE the tflite environment (it imports TensorFlow):

    python rpi_fixtures.py fmnist OUT [--train N] [--test N] [--epochs E]

writes OUT/cnn.keras (a small Keras 3 CNN trained on real Fashion-MNIST, Debian package
``dataset-fashion-mnist``), OUT/qat.h5 (the same CNN after a short tfmot quantization-aware
fine-tune, tf_keras), OUT/calib/ and OUT/val/ (PNG files + labels.csv, calib from the training
set, val from the 10k test set), OUT/fmnist.json (training numbers).

    python rpi_fixtures.py bad OUT

    python rpi_fixtures.py savedmodel OUT --keras CNN.keras [--batch B]

writes the CNN as a TF SavedModel (serving signature, fixed batch B).

    python rpi_fixtures.py bad OUT

writes the bad inputs: OUT/nosig_savedmodel/ (a SavedModel without any signature),
OUT/not_a_model.h5 (an HDF5 file holding only arrays), OUT/not_a_model.keras (text),
OUT/two_inputs.keras, OUT/unsupported.onnx (an op onnx2tf has no converter for).
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

FMNIST = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def fmnist_available() -> bool:
    return (FMNIST / "t10k-images-idx3-ubyte.gz").is_file()


def load_fmnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N,28,28], int64 [N]) of the real Fashion-MNIST ``train`` or ``t10k`` split."""
    with gzip.open(FMNIST / f"{split}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FMNIST / f"{split}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        name = f"{i:05d}.png"
        Image.fromarray(img, "L").save(folder / name)
        rows.append(f"{name},{int(lab)}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def _layers(k):
    return [k.layers.Conv2D(16, 3, activation="relu"), k.layers.MaxPooling2D(),
            k.layers.Conv2D(32, 3, activation="relu"), k.layers.MaxPooling2D(),
            k.layers.Flatten(), k.layers.Dense(64, activation="relu"), k.layers.Dense(10)]


def fmnist(out: Path, n_train: int = 6000, n_test: int = 500, n_calib: int = 200, epochs: int = 1):
    import keras  # Keras 3
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    tf.random.set_seed(0)
    keras.utils.set_random_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr = load_fmnist("train")
    xte, yte = load_fmnist("t10k")
    rng = np.random.default_rng(0)
    pick = rng.permutation(xtr.shape[0])
    train_i, calib_i = pick[:n_train], pick[n_train:n_train + n_calib]
    x = (xtr[train_i].astype(np.float32) / 255.0)[..., None]
    y = ytr[train_i]
    t = time.time()
    model = keras.Sequential([keras.Input((28, 28, 1), name="image")] + _layers(keras))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    xt = (xte[:n_test].astype(np.float32) / 255.0)[..., None]
    acc = float((model.predict(xt, verbose=0).argmax(1) == yte[:n_test]).mean())
    model.save(out / "cnn.keras")
    train_s = time.time() - t

    # QAT: the same CNN in tf_keras (tfmot works on Keras 2), same weights, a short fine-tune
    t = time.time()
    k2 = tf_keras.Sequential([tf_keras.Input((28, 28, 1), name="image")] + _layers(tf_keras))
    k2.set_weights(model.get_weights())
    qat = tfmot.quantization.keras.quantize_model(k2)
    qat.compile(optimizer="adam", loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x[:2000], y[:2000], batch_size=64, epochs=1, verbose=0)
    qacc = float((qat.predict(xt, verbose=0).argmax(1) == yte[:n_test]).mean())
    qat.save(out / "qat.h5")  # tfmot QAT layers do not reload from the .keras format (tf_keras 2.19)
    qat_s = time.time() - t

    write_pngs(out / "calib", xtr[calib_i], ytr[calib_i])
    write_pngs(out / "val", xte[:n_test], yte[:n_test])
    info = {"n_train": n_train, "epochs": epochs, "n_test": n_test, "n_calib": n_calib,
            "keras_accuracy": acc, "qat_accuracy": qacc, "train_seconds": round(train_s, 1),
            "qat_seconds": round(qat_s, 1)}
    (out / "fmnist.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))


def savedmodel(out: Path, keras_file: Path, batch: int = 1):
    """The Keras CNN as a plain TF SavedModel with a serving signature of fixed ``batch``."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(keras_file, compile=False)
    mod = tf.Module()
    mod.vars = [v.value for v in model.variables]

    @tf.function(input_signature=[tf.TensorSpec([batch, 28, 28, 1], tf.float32, name="image")])
    def serve(image):
        return {"logits": model(image, training=False)}

    mod.serve = serve
    tf.saved_model.save(mod, str(out), signatures={"serving_default": serve})
    print("SavedModel in", out)


def bad(out: Path):
    import h5py
    import keras
    import onnx
    import tensorflow as tf
    from onnx import TensorProto, helper

    out.mkdir(parents=True, exist_ok=True)
    # a SavedModel with no signature at all
    mod = tf.Module()
    mod.v = tf.Variable(1.0)
    tf.saved_model.save(mod, str(out / "nosig_savedmodel"), signatures={})
    # an HDF5 file with arrays only, and a text file called .keras
    with h5py.File(out / "not_a_model.h5", "w") as f:
        f["weights"] = np.zeros((3, 3), np.float32)
    (out / "not_a_model.keras").write_text("this is not a model\n")
    # a model with two image inputs
    a, b = keras.Input((8, 8, 3), name="a"), keras.Input((8, 8, 3), name="b")
    y = keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Add()([a, b])))
    keras.Model([a, b], y).save(out / "two_inputs.keras")
    # an image model with an op onnx2tf 1.29 has no converter for (CastLike)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])
    z = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])
    like = helper.make_tensor("like", TensorProto.FLOAT, [1], [0.0])
    node = helper.make_node("Relu", ["input"], ["r"])
    odd = helper.make_node("CastLike", ["r", "like"], ["out"])
    g = helper.make_graph([node, odd], "g", [x], [z], initializer=[like])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, out / "unsupported.onnx")
    print("bad inputs in", out)


if __name__ == "__main__":
    what, target = sys.argv[1], Path(sys.argv[2])
    args = dict(zip(sys.argv[3::2], sys.argv[4::2]))
    if what == "fmnist":
        fmnist(target, int(args.get("--train", 6000)), int(args.get("--test", 500)),
               int(args.get("--calib", 200)), int(args.get("--epochs", 1)))
    elif what == "savedmodel":
        savedmodel(target, Path(args["--keras"]), int(args.get("--batch", 1)))
    elif what == "bad":
        bad(target)
    else:
        raise SystemExit(f"unknown fixture {what}")
