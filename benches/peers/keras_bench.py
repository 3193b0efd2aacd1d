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
from keras import layers as L, ops  # noqa: E402

B = int(os.environ.get("KERAS_BATCH", "32"))
# Inference alone (other batch sizes than training's): INFER_ONLY=1.
INFER_ONLY = os.environ.get("INFER_ONLY") == "1"
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
BCE = keras.losses.BinaryCrossentropy(from_logits=True)


def conv_pool2(x):
    """Conv2D(16, 3, same, relu) -> MaxPool(2) -> Conv2D(32, ...) -> MaxPool(2)."""
    x = L.MaxPooling2D(2)(L.Conv2D(16, 3, padding="same", activation="relu")(x))
    return L.MaxPooling2D(2)(L.Conv2D(32, 3, padding="same", activation="relu")(x))


def shapes_mm():
    img = keras.Input((32, 32, 3), name="image")
    txt = keras.Input((16,), dtype="int32", name="text")
    x = conv_pool2(img)
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


def digits():
    # models/digits.mtl is the digits_mt architecture.
    return digits_mt()


def seed_multitask(hw=64, c1=64, c2=128):
    """models/seed_multitask.mtl (the fixture seed_multitask_small: 32, 8, 16)."""
    img = keras.Input((hw, hw, 3), name="image")
    trunk = L.Conv2D(c2, 3, activation="relu")(L.Conv2D(c1, 3, activation="relu")(img))
    outs = {
        "classifier": L.Dense(10, name="classifier")(L.GlobalAveragePooling2D()(trunk)),
        "segmentation": L.Conv2D(1, 1, name="segmentation")(trunk),
    }
    return keras.Model(img, outs), {"classifier": CE, "segmentation": BCE}


def seed_multimodal():
    img = keras.Input((64, 64, 3), name="image")
    txt = keras.Input((100,), dtype="int32", name="text")
    v = L.GlobalAveragePooling2D()(L.Conv2D(64, 3, activation="relu")(img))
    t = L.LSTM(64)(L.Embedding(10000, 128)(txt))
    outs = {"label": L.Dense(10, name="label")(L.Concatenate()([v, t]))}
    return keras.Model([img, txt], outs), {"label": CE}


def siamese():
    left = keras.Input((16, 16, 1), name="left")
    right = keras.Input((16, 16, 1), name="right")
    conv, dense = L.Conv2D(8, 3, activation="relu"), L.Dense(16)
    enc = lambda x: dense(L.GlobalAveragePooling2D()(conv(x)))  # noqa: E731
    a, b = enc(left), enc(right)
    z = L.Concatenate()([L.Average()([a, b]), L.Multiply()([a, b])])
    outs = {"same": L.Dense(1, name="same")(L.Dense(32, activation="relu")(z))}
    return keras.Model([left, right], outs), {"same": BCE}


class Weighted(L.Layer):
    """Σ softmax(θ)ᵢ·xᵢ with θ learned (mtl's `weighted`)."""

    def build(self, shapes):
        self.theta = self.add_weight(shape=(len(shapes),), initializer="zeros")

    def call(self, xs):
        w = keras.ops.softmax(self.theta)
        return sum(w[i] * x for i, x in enumerate(xs))


class AuxMse(L.Layer):
    """mtl's `loss agree = mse(value, value_aux) { weight: 0.1 }`."""

    def call(self, a, b):
        self.add_loss(0.1 * keras.ops.mean(keras.ops.square(a - keras.ops.stop_gradient(b))))
        return a


def fusions():
    img = keras.Input((16, 16, 3), name="img")
    seq = keras.Input((10, 6), name="seq")
    num = keras.Input((8,), name="num")
    conv_bn = lambda x, c, k: L.ReLU()(L.BatchNormalization()(L.Conv2D(c, k, padding="same")(x)))  # noqa: E731
    v = L.Dense(16)(L.GlobalMaxPooling2D()(conv_bn(conv_bn(img, 8, 3), 8, 1)))
    s = L.GRU(16)(L.Bidirectional(L.GRU(16, return_sequences=True))(seq))
    n = L.Dropout(0.1)(L.LayerNormalization()(L.Dense(16)(num)))
    avg = L.Average()([v, s, n])
    g = L.Dense(16, activation="sigmoid")(L.Concatenate()([v, s]))
    gated = L.Add()([L.Multiply()([g, v]), L.Multiply()([L.Lambda(lambda t: 1.0 - t)(g), s])])
    wf = L.Add()([L.Lambda(lambda t: 0.7 * t)(v), L.Lambda(lambda t: 0.3 * t)(s)])
    top = L.Activation("silu")(L.Maximum()([v, s]))
    z = L.Concatenate()([L.Concatenate()([v, s, n]), avg, Weighted()([v, s, n]), wf, gated, L.Add()([v, n]), top])
    value = L.Dense(1, name="value")(avg)
    value_aux = L.Dense(1, name="value_aux")(n)
    outs = {
        "cls": L.Dense(5, name="cls")(L.Dense(32, activation="relu")(z)),
        "value": AuxMse()(value, value_aux),
        "value_aux": value_aux,
    }
    return keras.Model([img, seq, num], outs), {"cls": CE, "value": keras.losses.Huber(), "value_aux": "mae"}


class PosEmb(L.Layer):
    """keras-hub's PositionEmbedding added to its input (mtl's `position_embedding`)."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[1], shape[2]), initializer="glorot_uniform")

    def call(self, x):
        return x + self.w

    def compute_mask(self, x, mask=None):
        return mask


def post_ln(x, heads, key_dim, ff, width, eps=1e-5):
    """models/lib/transformer.mtl `encoder` (keras-hub TransformerEncoder)."""
    a = L.Dropout(0.1)(L.MultiHeadAttention(heads, key_dim)(x, x))
    x = L.LayerNormalization(epsilon=eps)(L.Add()([x, a]))
    f = L.Dropout(0.1)(L.Dense(width)(L.Dense(ff, activation="gelu")(x)))
    return L.LayerNormalization(epsilon=eps)(L.Add()([x, f]))


def pre_ln(x, heads, key_dim, ff, width):
    """models/lib/transformer.mtl `pre_ln_encoder`."""
    h = L.LayerNormalization(epsilon=1e-6)(x)
    x = L.Add()([x, L.Dropout(0.1)(L.MultiHeadAttention(heads, key_dim)(h, h))])
    h = L.LayerNormalization(epsilon=1e-6)(x)
    return L.Add()([x, L.Dropout(0.1)(L.Dense(width)(L.Dense(ff, activation="gelu")(h)))])


class First(L.Layer):
    def call(self, x):
        return x[:, 0]

    def compute_mask(self, x, mask=None):
        return None


def captions():
    img = keras.Input((32, 32, 3), name="image")
    cap = keras.Input((8,), dtype="int32", name="caption")
    p = L.MaxPooling2D(2)(L.Conv2D(16, 3, padding="same", activation="relu")(img))
    p = L.Reshape((16, 32))(L.Conv2D(32, 4, strides=4)(p))
    p = L.LayerNormalization()(pre_ln(PosEmb()(p), 2, 16, 64, 32))
    w = post_ln(PosEmb()(L.Embedding(32, 32, mask_zero=True)(cap)), 2, 16, 64, 32)
    fused = L.MultiHeadAttention(2, 16)(w, p)
    outs = {
        "shape": L.Dense(3, name="shape")(L.GlobalAveragePooling1D()(p)),
        "owner": L.Dense(4, name="owner")(First()(w)),
        "total": L.Dense(1, name="total")(L.Dense(64, activation="relu")(L.GlobalAveragePooling1D()(L.Add()([w, fused])))),
    }
    return keras.Model([img, cap], outs), {"shape": CE, "owner": CE, "total": "mse"}


class Mixture(L.Layer):
    """Σᵢ softmax(W·x + b)ᵢ · eᵢ (mtl's `mixture`)."""

    def build(self, shapes):
        self.gate = L.Dense(len(shapes) - 1, activation="softmax")

    def call(self, inputs):
        *experts, x = inputs
        return ops.einsum("bk,bkd->bd", self.gate(x), ops.stack(experts, axis=1))


def mmoe():
    x = keras.Input((16,), name="x")
    experts = [L.Dense(32, activation="relu")(x) for _ in range(3)]
    outs = {}
    for t in ("y1", "y2"):
        h = L.Dense(16, activation="relu")(Mixture()(experts + [x]))
        outs[t] = L.Dense(1, name=t)(h)
    return keras.Model(x, outs), {"y1": "mse", "y2": "mse"}


def overlap():
    img = keras.Input((28, 28, 1), name="image")
    x = conv_pool2(img)
    trunk = L.Dense(64, activation="relu")(L.Flatten()(x))
    outs = {t: L.Dense(6, name=t)(L.Dense(32, activation="relu")(trunk)) for t in ("left", "right")}
    return keras.Model(img, outs), {"left": CE, "right": CE}


def tones():
    sound = keras.Input((40, 50), name="sound")  # log-mel bands x frames
    img = keras.Input((28, 28, 1), name="image")
    a = L.Reshape((40, 50, 1))(sound)
    a = conv_pool2(a)
    heard = L.Dense(32, activation="relu")(L.Flatten()(a))
    s = L.MaxPooling2D(2)(L.Conv2D(16, 3, padding="same", activation="relu")(img))
    s = L.GlobalMaxPooling2D()(L.Conv2D(32, 3, padding="same", activation="relu")(s))
    seen = L.Dense(32, activation="relu")(s)
    outs = {
        "sound_class": L.Dense(4, name="sound_class")(heard),
        "shape": L.Dense(3, name="shape")(seen),
        "agree": L.Dense(1, name="agree")(L.Dense(32, activation="relu")(L.Concatenate()([heard, seen]))),
    }
    return keras.Model([sound, img], outs), {"sound_class": CE, "shape": CE, "agree": BCE}


class Contrastive(L.Layer):
    """mtl's `contrastive(a, b, learn_temperature = true)`: CLIP's symmetric
    InfoNCE over the batch between the L2-normalised a and b, with a learned
    log inverse temperature (init ln(1/0.07), its exp clamped at 100). Adds
    the loss and passes `x` through (to keep the layer in the model)."""

    def build(self, *shapes):
        self.logit_scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(float(np.log(1 / 0.07))))

    def call(self, x, a, b):
        a = a / ops.norm(a, axis=-1, keepdims=True)
        b = b / ops.norm(b, axis=-1, keepdims=True)
        logits = ops.minimum(ops.exp(self.logit_scale), 100.0) * ops.matmul(a, ops.transpose(b))
        labels = ops.arange(ops.shape(logits)[0])
        ce = lambda z: ops.mean(keras.losses.sparse_categorical_crossentropy(labels, z, from_logits=True))  # noqa: E731
        self.add_loss((ce(logits) + ce(ops.transpose(logits))) / 2)
        return x


def clip():
    img = keras.Input((28, 28, 1), name="image")
    cap = keras.Input((5,), dtype="int32", name="caption")
    x = conv_pool2(img)
    v = L.Dense(64, activation="relu")(L.Flatten()(x))
    t = L.LSTM(64)(L.Embedding(32, 32, mask_zero=True)(cap))
    v = Contrastive()(v, L.Dense(32)(v), L.Dense(32)(t))
    outs = {"left": L.Dense(6, name="left")(v), "right": L.Dense(6, name="right")(t)}
    return keras.Model([img, cap], outs), {"left": CE, "right": CE}


def text_transformer():
    """../shared/fixtures/text_transformer.mtl: one post-LN block (eps 1e-3)."""
    txt = keras.Input((12,), dtype="int32", name="text")
    e = PosEmb()(L.Embedding(50, 16, mask_zero=True)(txt))
    pooled = L.GlobalAveragePooling1D()(post_ln(e, 2, 8, 32, 16, eps=1e-3))
    outs = {"topic": L.Dense(3, name="topic")(pooled), "score": L.Dense(1, name="score")(pooled)}
    return keras.Model(txt, outs), {"topic": CE, "score": "mse"}


def fusion_ops():
    """../shared/fixtures/fusion_ops.mtl."""
    a, b = keras.Input((12,), name="a"), keras.Input((20,), name="b")
    pa, pb = L.Dense(16)(a), L.Dense(16)(b)
    fs = {"s": L.Add(), "m": L.Multiply(), "avg": L.Average(), "mx": L.Maximum()}
    outs = {k: L.Dense(2, name=k)(f([pa, pb])) for k, f in fs.items()}
    return keras.Model([a, b], outs), {k: "mse" for k in fs}


def seed_multitask_small():
    return seed_multitask(32, 8, 16)


def mmoe_fixture():
    """../shared/fixtures/mmoe.mtl: three experts of 16, a gate per head."""
    x = keras.Input((12,), name="x")
    experts = [L.Dense(16, activation="relu")(x) for _ in range(3)]
    outs = {t: L.Dense(1, name=t)(Mixture()(experts + [x])) for t in ("click", "buy")}
    return keras.Model(x, outs), {"click": BCE, "buy": BCE}


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
    out_shape = {k: tuple(o.shape[1:]) for k, o in zip(model.output_names, model.outputs)} if hasattr(model, "output_names") else {}
    shape_of = lambda k: out_shape.get(k) or tuple(model.get_layer(k).output.shape[1:])  # noqa: E731
    ys = {k: (np.zeros((n,), "int32") if losses[k] is CE else np.zeros((n,) + shape_of(k), "float32")) for k in losses}
    train = None
    if not INFER_ONLY:
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


MODELS = {
    "shapes_mm": shapes_mm,
    "digits_mt": digits_mt,
    "digits": digits,
    "shapes": shapes,
    "reviews": reviews,
    "seed_multitask": seed_multitask,
    "seed_multimodal": seed_multimodal,
    "siamese": siamese,
    "fusions": fusions,
    "captions": captions,
    "mmoe": mmoe,
    "overlap": overlap,
    "tones": tones,
    "clip": clip,
    "text_transformer": text_transformer,
    "fusion_ops": fusion_ops,
    "seed_multitask_small": seed_multitask_small,
    "mmoe_fixture": mmoe_fixture,
}

if __name__ == "__main__":
    for name in sys.argv[1:] or MODELS:
        bench(name, MODELS[name])
