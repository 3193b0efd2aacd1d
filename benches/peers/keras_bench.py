"""Keras 3 (JAX backend, XLA on CPU) peers of mtl's models, for throughput
comparisons on the same machine. Run by hand through compare.sh:

    python3 -m venv /tmp/peer && /tmp/peer/bin/pip install keras jax
    PYTHON=/tmp/peer/bin/python benches/peers/compare.sh

Prints one JSON object per model: training and inference samples per second
at batch 32 (Adam, random data of the model's shapes).
"""
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402

B = 32
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
BCE = keras.losses.BinaryCrossentropy(from_logits=True)


def shapes_mm():
    img = keras.Input((32, 32, 3), name="image")
    txt = keras.Input((16,), dtype="int32", name="text")
    x = L.MaxPooling2D(2)(L.Conv2D(16, 3, padding="same", activation="relu")(img))
    x = L.MaxPooling2D(2)(L.Conv2D(32, 3, padding="same", activation="relu")(x))
    x = L.Dense(64, activation="relu")(L.Flatten()(x))
    t = L.LSTM(32)(L.Embedding(1000, 32)(txt))
    h = L.Dense(64, activation="relu")(L.Concatenate()([x, t]))
    outs = {"cls": L.Dense(4, name="cls")(h), "reg": L.Dense(1, name="reg")(h)}
    return keras.Model([img, txt], outs), {"cls": CE, "reg": "mse"}


def digits_mt():
    img = keras.Input((8, 8, 1), name="image")
    x = L.MaxPooling2D(2)(L.Conv2D(16, 3, padding="same", activation="relu")(img))
    x = L.GlobalAveragePooling2D()(L.Conv2D(32, 3, padding="same", activation="relu")(x))
    h = L.Dense(64, activation="relu")(x)
    outs = {"digit": L.Dense(10, name="digit")(h), "parity": L.Dense(1, name="parity")(h), "ge5": L.Dense(1, name="ge5")(h)}
    return keras.Model(img, outs), {"digit": CE, "parity": BCE, "ge5": BCE}


def shapes():
    img = keras.Input((32, 32, 3), name="image")
    cap = keras.Input((8,), dtype="int32", name="caption")
    feat = L.Conv2D(32, 3, padding="same", activation="relu")(L.MaxPooling2D(2)(L.Conv2D(16, 3, padding="same", activation="relu")(img)))
    v = L.GlobalAveragePooling2D()(feat)
    t = L.LSTM(32)(L.Embedding(32, 16)(cap))
    s = L.GlobalMaxPooling2D()(L.Conv2D(32, 3, padding="same", activation="relu")(L.MaxPooling2D(2)(feat)))
    outs = {
        "shape": L.Dense(3, name="shape")(s),
        "owner": L.Dense(4, name="owner")(t),
        "total": L.Dense(1, name="total")(L.Dense(64, activation="relu")(L.Concatenate()([v, t]))),
        "mask": L.Conv2D(1, 1, name="mask")(L.UpSampling2D(2)(feat)),
    }
    return keras.Model([img, cap], outs), {"shape": CE, "owner": CE, "total": "mse", "mask": BCE}


def reviews():
    txt = keras.Input((64,), dtype="int32", name="text")
    h = L.LSTM(128)(L.Embedding(5000, 64)(txt))
    outs = {"sentiment": L.Dense(3, name="sentiment")(h), "stars": L.Dense(1, name="stars")(h)}
    return keras.Model(txt, outs), {"sentiment": CE, "stars": "mse"}


def data(model, n):
    rng = np.random.default_rng(0)
    xs = []
    for i in model.inputs:
        shape = (n,) + tuple(i.shape[1:])
        xs.append(rng.integers(0, 5, shape).astype("int32") if "int" in str(i.dtype) else rng.random(shape, dtype="float32"))
    ys = {}
    for name, o in zip(model.output_names if hasattr(model, "output_names") else [], model.outputs):
        ys[name] = np.zeros((n,) + tuple(o.shape[1:]), "float32")
    return xs, ys


def bench(name, build):
    model, losses = build()
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=losses)
    n = B * 20
    xs, _ = data(model, n)
    ys = {k: (np.zeros((n,), "int32") if losses[k] is CE else np.zeros((n,) + tuple(model.get_layer(k).output.shape[1:]), "float32")) for k in losses}
    model.fit(xs, ys, batch_size=B, epochs=1, verbose=0)  # compile
    t = time.perf_counter()
    model.fit(xs, ys, batch_size=B, epochs=3, verbose=0)
    train = 3 * n / (time.perf_counter() - t)
    model.predict(xs, batch_size=B, verbose=0)
    t = time.perf_counter()
    model.predict(xs, batch_size=B, verbose=0)
    infer = n / (time.perf_counter() - t)
    print(json.dumps({"model": name, "train_samples_per_sec": train, "infer_samples_per_sec": infer}))
    sys.stdout.flush()


MODELS = {"shapes_mm": shapes_mm, "digits_mt": digits_mt, "shapes": shapes, "reviews": reviews}

if __name__ == "__main__":
    for name in sys.argv[1:] or MODELS:
        bench(name, MODELS[name])
