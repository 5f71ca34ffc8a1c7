"""Model files that run code when loaded, for tests/integration/test_model_trust.py.

Run INSIDE the tflite environment (it imports TensorFlow):

    python trust_fixtures.py OUT MARKER

writes OUT/evil.h5 (a tf_keras model whose Lambda layer's Python bytecode writes MARKER when the
model is rebuilt or called), OUT/evil_savedmodel/ (a SavedModel whose serving signature writes
MARKER with tf.io.write_file) and OUT/good_savedmodel/ (a plain Keras 3 export), and prints the
OUTSIDE_OPS that converters/ekit_tf.py finds in each SavedModel as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

out, marker = Path(sys.argv[1]), sys.argv[2]
out.mkdir(parents=True, exist_ok=True)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

# the payload is self-contained (a literal path), as a downloaded file's would be
payload = eval("lambda t: (__import__('pathlib').Path(%r).write_text('ran'), t)[1]" % marker)
inp = tf_keras.Input((8, 8, 3))
x = tf_keras.layers.Flatten()(tf_keras.layers.Lambda(payload)(inp))
tf_keras.Model(inp, tf_keras.layers.Dense(2)(x)).save(out / "evil.h5")


class Evil(tf.Module):
    def __init__(self):
        self.w = tf.Variable(tf.ones([3, 2]))

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
    def __call__(self, x):
        tf.io.write_file(marker, "ran")
        return {"y": tf.matmul(tf.reduce_mean(x, axis=[1, 2]), self.w)}


evil = Evil()
tf.saved_model.save(evil, os.fspath(out / "evil_savedmodel"), signatures=evil.__call__)
kin = keras.Input((8, 8, 3))
good = keras.Model(kin, keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(kin))))
good.export(os.fspath(out / "good_savedmodel"))
Path(marker).unlink(missing_ok=True)  # making the files ran the payloads once; the tests start clean

CONVERTERS = Path(__file__).resolve().parents[2] / "converters"
sys.path.insert(0, os.fspath(CONVERTERS / "tflite"))  # ekit_tf lives beside the tflite templates
sys.path.append(os.fspath(CONVERTERS))  # the ekit package; appended: its runtime folders never shadow a package
import ekit_tf  # noqa: E402

print(json.dumps({name: ekit_tf.saved_model_outside_ops(out / name)
                  for name in ("evil_savedmodel", "good_savedmodel")}))
