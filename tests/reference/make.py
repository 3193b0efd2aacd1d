"""Keras 3 reference cases for layers beyond the shared fixtures: masked and
causal attention, cross-modal `attend` with a vector query, `select`,
residual conv blocks, masked LSTM/GRU (bidirectional too). For each case
NAME it writes NAME.mtl, NAME.weights.safetensors (mtl's keys and PyTorch
layouts), NAME.inputs.safetensors, NAME.expected.safetensors (probabilities
for classification heads) and NAME.keras_params.txt. Run once by hand:

    python3 -m venv /tmp/kvenv && /tmp/kvenv/bin/pip install keras jax safetensors
    KERAS_BACKEND=jax /tmp/kvenv/bin/python tests/reference/make.py

`cargo test --test fixtures` checks every case; Python is never needed there.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers as L, ops  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

OUT = os.path.dirname(os.path.abspath(__file__))
B = 4


class PosEmb(L.Layer):
    """keras-hub's PositionEmbedding, added to its input (mask passes)."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[1], shape[2]), initializer="glorot_uniform")

    def call(self, x):
        return x + self.w

    def compute_mask(self, x, mask=None):
        return mask


class MaskedMax(L.Layer):
    """Max over axis 1 of real positions only (mtl's masked global_max_pool)."""

    def call(self, x, mask=None):
        m = ops.expand_dims(ops.cast(mask, x.dtype), -1)
        return ops.max(x * m + (m - 1.0) * 1e30, axis=1)

    def compute_mask(self, x, mask=None):
        return None


class Take(L.Layer):
    def __init__(self, index, axis, **kw):
        super().__init__(**kw)
        self.index, self.axis = index, axis

    def call(self, x):
        return ops.take(x, self.index if self.index >= 0 else x.shape[self.axis] + self.index, axis=self.axis)

    def compute_mask(self, x, mask=None):
        return None


def tokens(rng, t, vocab):
    """Ids with padding (0) at the end, in the middle and at the start; every row has a real id."""
    ids = rng.integers(1, vocab, size=(B, t))
    ids[0, t // 2:] = 0
    ids[1, 1] = 0
    ids[2, :2] = 0
    ids[3, -1] = 0
    return ids


def dense(w, name, layer):
    k, b = layer.get_weights()
    w[f"{name}.weight"] = k.T
    w[f"{name}.bias"] = b


def mha(w, name, layer):
    q, qb, k, kb, v, vb, o, ob = layer.get_weights()
    for key, kern, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
        w[f"{name}.{key}.weight"] = kern.reshape(kern.shape[0], -1).T
        w[f"{name}.{key}.bias"] = bias.reshape(-1)
    w[f"{name}.out.weight"] = o.reshape(-1, o.shape[-1]).T
    w[f"{name}.out.bias"] = ob


def conv(w, name, layer):
    k, b = layer.get_weights()  # [kh, kw, C, F]
    w[f"{name}.weight"] = k.transpose(3, 2, 0, 1)
    w[f"{name}.bias"] = b


def lstm(w, name, cell_layer, suffix=""):
    k, r, b = cell_layer.get_weights()  # gates i, f, c, o = PyTorch's i, f, g, o
    w[f"{name}.weight_ih{suffix}"] = k.T
    w[f"{name}.weight_hh{suffix}"] = r.T
    w[f"{name}.bias{suffix}"] = b


def gru(w, name, cell_layer, suffix=""):
    k, r, b = cell_layer.get_weights()  # Keras gates z, r, h; PyTorch r, z, n
    h = k.shape[1] // 3
    order = np.r_[h:2 * h, 0:h, 2 * h:3 * h]
    w[f"{name}.weight_ih{suffix}"] = k[:, order].T
    w[f"{name}.weight_hh{suffix}"] = r[:, order].T
    w[f"{name}.bias_ih{suffix}"] = b[0][order]
    w[f"{name}.bias_hh{suffix}"] = b[1][order]


def randomize(model, rng):
    """Non-zero biases and moderate weights, so that every parameter matters."""
    for v in model.weights:
        v.assign(rng.normal(0, 0.4, size=v.shape).astype("float32"))


def save(name, text, model, w, inputs, heads):
    outs = model.predict(inputs, verbose=0)
    outs = outs if isinstance(outs, list) else [outs]
    expected = {}
    for (head, kind), y in zip(heads, outs):
        y = np.asarray(y, dtype="float32")
        if kind == "ce":
            y = np.asarray(ops.softmax(y, axis=-1))
        elif kind == "bce":
            y = np.asarray(ops.sigmoid(y))
        expected[head] = y.astype("float32")
    open(os.path.join(OUT, f"{name}.mtl"), "w").write(text)
    save_file({k: np.ascontiguousarray(v, dtype="float32") for k, v in w.items()},
              os.path.join(OUT, f"{name}.weights.safetensors"))
    save_file({k: np.ascontiguousarray(v) for k, v in inputs.items()},
              os.path.join(OUT, f"{name}.inputs.safetensors"))
    save_file(expected, os.path.join(OUT, f"{name}.expected.safetensors"))
    n = model.count_params()
    open(os.path.join(OUT, f"{name}.keras_params.txt"), "w").write(
        f"total: {n}\ntrainable: {n}\nnon_trainable: 0\n")


def masked_causal(rng):
    text = """# Keras: Embedding(mask_zero) -> MultiHeadAttention(3, 4,
# use_causal_mask=True) -> masked GlobalAveragePooling1D / masked max.
model ref_masked_causal {
  input text: tokens[10] vocab 30
  let e = text -> embedding(12, mask_zero = true) as embed
  let a = e -> attention(3, 4, causal = true) as mha
  head cls = a -> global_avg_pool(axis = 1) -> dense(4) as cls_fc { loss: cross_entropy }
  head val = a -> global_max_pool(axis = 1) -> dense(1) as val_fc { loss: mse }
}
"""
    x = keras.Input((10,), dtype="int32", name="text")
    emb = L.Embedding(30, 12, mask_zero=True)
    att = L.MultiHeadAttention(3, 4)
    e = emb(x)
    a = att(e, e, use_causal_mask=True)
    f1, f2 = L.Dense(4), L.Dense(1)
    model = keras.Model(x, [f1(L.GlobalAveragePooling1D()(a)), f2(MaskedMax()(a))])
    randomize(model, rng)
    w = {"embed.weight": emb.get_weights()[0]}
    mha(w, "mha", att)
    dense(w, "cls_fc", f1)
    dense(w, "val_fc", f2)
    save("ref_masked_causal", text, model, w, {"text": tokens(rng, 10, 30)},
         [("cls", "ce"), ("val", "mse")])


def attend_vector(rng):
    text = """# Keras: MultiHeadAttention(2, 3)(query[:, None], context) for a vector
# query over a masked token context, and a masked sequence query.
model ref_attend_vector {
  input feats: f32[6]
  input text: tokens[8] vocab 20
  let ctx = text -> embedding(10, mask_zero = true) as embed
  let q = feats -> dense(10) as proj
  let fused = attend(q, ctx, 2, 3) as xattn
  let seq = ctx -> attend(ctx, 1, 4) as self_x
  head y = fused -> dense(3) as y_fc { loss: cross_entropy }
  head z = seq -> global_avg_pool(axis = 1) -> dense(1) as z_fc { loss: binary_cross_entropy }
}
"""
    f = keras.Input((6,), name="feats")
    t = keras.Input((8,), dtype="int32", name="text")
    emb, proj = L.Embedding(20, 10, mask_zero=True), L.Dense(10)
    x1, x2 = L.MultiHeadAttention(2, 3), L.MultiHeadAttention(1, 4)
    yf, zf = L.Dense(3), L.Dense(1)
    # One embedding call per reader: Keras's MultiHeadAttention deletes the
    # mask of the tensors it reads, so a second reader would see none.
    ctx, ctx2 = emb(t), emb(t)
    q = L.Reshape((1, 10))(proj(f))
    fused = L.Reshape((10,))(x1(q, ctx))
    seq = x2(ctx2, ctx2)
    model = keras.Model([f, t], [yf(fused), zf(L.GlobalAveragePooling1D()(seq))])
    randomize(model, rng)
    w = {"embed.weight": emb.get_weights()[0]}
    dense(w, "proj", proj)
    mha(w, "xattn", x1)
    mha(w, "self_x", x2)
    dense(w, "y_fc", yf)
    dense(w, "z_fc", zf)
    inputs = {"feats": rng.normal(size=(B, 6)).astype("float32"), "text": tokens(rng, 8, 20)}
    save("ref_attend_vector", text, model, w, inputs, [("y", "ce"), ("z", "bce")])


def select_residual(rng):
    text = """# Keras: post-LN encoder block with a position table, x[:, 0] ([CLS]) and
# x[:, :, -1]; a residual conv block (channels first).
model ref_select_residual {
  input text: tokens[7] vocab 25
  input image: image[2, 6, 6]
  let e = text -> embedding(8, mask_zero = true) as embed -> position_embedding as pos
  let enc = e -> residual(attention(2, 4) as mha) -> layer_norm as ln
  let cls = enc -> select(0)
  let last = enc -> select(-1, axis = -1)
  let c = image -> conv2d(4, 3, padding = same) as c0 -> relu
    -> residual(conv2d(4, 3, padding = same) as c1 -> relu -> conv2d(4, 3, padding = same) as c2)
    -> global_avg_pool
  head a = concat(cls, c) -> dense(3) as a_fc { loss: cross_entropy }
  head b = last -> dense(1) as b_fc { loss: mse }
}
"""
    t = keras.Input((7,), dtype="int32", name="text")
    img = keras.Input((2, 6, 6), name="image")
    emb, pos, att, ln = L.Embedding(25, 8, mask_zero=True), PosEmb(), L.MultiHeadAttention(2, 4), L.LayerNormalization(epsilon=1e-3)
    e = pos(emb(t))
    enc = ln(L.Add()([e, att(e, e)]))
    cls = Take(0, 1)(enc)
    last = Take(-1, 2)(enc)
    cv = lambda: L.Conv2D(4, 3, padding="same", data_format="channels_first")  # noqa: E731
    c0, c1, c2 = cv(), cv(), cv()
    h = L.ReLU()(c0(img))
    h = L.Add()([h, c2(L.ReLU()(c1(h)))])
    c = L.GlobalAveragePooling2D(data_format="channels_first")(h)
    af, bf = L.Dense(3), L.Dense(1)
    model = keras.Model([t, img], [af(L.Concatenate()([cls, c])), bf(last)])
    randomize(model, rng)
    w = {"embed.weight": emb.get_weights()[0], "pos.weight": pos.get_weights()[0],
         "ln.weight": ln.get_weights()[0], "ln.bias": ln.get_weights()[1]}
    mha(w, "mha", att)
    for n, l in (("c0", c0), ("c1", c1), ("c2", c2)):
        conv(w, n, l)
    dense(w, "a_fc", af)
    dense(w, "b_fc", bf)
    inputs = {"text": tokens(rng, 7, 25), "image": rng.normal(size=(B, 2, 6, 6)).astype("float32")}
    save("ref_select_residual", text, model, w, inputs, [("a", "ce"), ("b", "mse")])


def masked_rnn(rng):
    text = """# Keras: LSTM/GRU over masked steps (state carried), Bidirectional with
# zero outputs at padded steps, final states of masked sequences.
model ref_masked_rnn {
  input text: tokens[9] vocab 15
  let e = text -> embedding(6, mask_zero = true) as embed
  let s = e -> lstm(5, return_sequences = true) as l1
            -> gru(4, bidirectional = true, return_sequences = true) as g1
  let h = s -> lstm(3) as l2
  let k = e -> gru(3) as g2
  let bl = e -> lstm(2, bidirectional = true) as bl
  head y = h -> dense(2) as y_fc { loss: cross_entropy }
  head z = s -> global_avg_pool(axis = 1) -> dense(1) as z_fc { loss: mse }
  head v = concat(k, bl) -> dense(1) as v_fc { loss: mse }
}
"""
    t = keras.Input((9,), dtype="int32", name="text")
    emb = L.Embedding(15, 6, mask_zero=True)
    l1, g1 = L.LSTM(5, return_sequences=True), L.Bidirectional(L.GRU(4, return_sequences=True))
    l2, g2, bl = L.LSTM(3), L.GRU(3), L.Bidirectional(L.LSTM(2))
    yf, zf, vf = L.Dense(2), L.Dense(1), L.Dense(1)
    e = emb(t)
    s = g1(l1(e))
    model = keras.Model(t, [yf(l2(s)), zf(L.GlobalAveragePooling1D()(s)),
                            vf(L.Concatenate()([g2(e), bl(e)]))])
    randomize(model, rng)
    w = {"embed.weight": emb.get_weights()[0]}
    lstm(w, "l1", l1.cell)
    gru(w, "g1", g1.forward_layer.cell)
    gru(w, "g1", g1.backward_layer.cell, "_reverse")
    lstm(w, "l2", l2.cell)
    gru(w, "g2", g2.cell)
    lstm(w, "bl", bl.forward_layer.cell)
    lstm(w, "bl", bl.backward_layer.cell, "_reverse")
    for n, l in (("y_fc", yf), ("z_fc", zf), ("v_fc", vf)):
        dense(w, n, l)
    save("ref_masked_rnn", text, model, w, {"text": tokens(rng, 9, 15)},
         [("y", "ce"), ("z", "mse"), ("v", "mse")])


if __name__ == "__main__":
    for i, case in enumerate((masked_causal, attend_vector, select_residual, masked_rnn)):
        case(np.random.default_rng(100 + i))
        print("wrote", case.__name__)
