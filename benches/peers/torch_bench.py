"""PyTorch peers of mtl's models (the counterparts of keras_bench.py, with the
same architectures, input shapes and losses), for throughput comparisons:

    python torch_bench.py MODEL [--device cpu|cuda] [--mode eager|compile]
        [--batch-size 32] [--precision f32|bf16] [--steps N] [--repeats R]

Prints one JSON line: training and inference samples per second (Adam, random
data of the model's shapes). Timing mirrors keras_bench.py: a data set of 20
batches; training warms up over one pass of them (20 steps, compilation
included, untimed) and is then timed over `--steps` steps (default 60, the
three epochs of keras_bench); inference warms up over one pass and is timed
over one pass (20 batches). With `--repeats R` > 1 each timed run is repeated
R times and the median is reported (keras_bench does one run).

Tensors are in PyTorch's layout: images NCHW (mtl's channels-first), which
only permutes the Keras NHWC tensors.
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

N_BATCHES = 20  # keras_bench: n = B * 20 samples

# Loss kinds (keras_bench's loss dicts).
CE, BCE, MSE, HUBER, MAE = "ce", "bce", "mse", "huber", "mae"


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


def conv_same(cin, cout, k):
    """Keras Conv2D(cout, k, padding="same") for odd k."""
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class LastState(nn.Module):
    """Keras LSTM(h) / GRU(h) with return_sequences=False: the last output."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        out, _ = self.rnn(x)
        return out[:, -1]


def lstm(din, h):
    return LastState(nn.LSTM(din, h, batch_first=True))


def gap2d(x):  # GlobalAveragePooling2D, NCHW
    return x.mean(dim=(2, 3))


def gmp2d(x):  # GlobalMaxPooling2D, NCHW
    return x.amax(dim=(2, 3))


class MHA(nn.Module):
    """keras.layers.MultiHeadAttention(heads, key_dim): q, k, v projections to
    heads·key_dim (with biases), scaled dot-product attention, an output
    projection back to the query's width. `mask` is an additive float mask
    broadcastable to [B, heads, Tq, Tk] (or None)."""

    def __init__(self, q_dim, kv_dim, heads, key_dim):
        super().__init__()
        self.heads, self.key_dim = heads, key_dim
        inner = heads * key_dim
        self.q = nn.Linear(q_dim, inner)
        self.k = nn.Linear(kv_dim, inner)
        self.v = nn.Linear(kv_dim, inner)
        self.o = nn.Linear(inner, q_dim)

    def forward(self, query, value, mask=None):
        b, tq, _ = query.shape
        tk = value.shape[1]
        h, d = self.heads, self.key_dim
        q = self.q(query).view(b, tq, h, d).transpose(1, 2)
        k = self.k(value).view(b, tk, h, d).transpose(1, 2)
        v = self.v(value).view(b, tk, h, d).transpose(1, 2)
        if mask is not None:
            # Dense [B, 1, Tq, Tk]: CUDA's fused attention kernels want the
            # bias's last dimension contiguous (a broadcast one is not).
            mask = mask.to(q.dtype).expand(b, 1, tq, tk).contiguous()
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(a.transpose(1, 2).reshape(b, tq, h * d))


def attention_mask(q_mask, k_mask):
    """Keras MHA's mask from the query and value masks (bool [B, T] or None):
    query_mask[:, :, None] & value_mask[:, None, :], as an additive mask
    (-1e9 where masked, so that a fully masked row is uniform, as in Keras)."""
    if q_mask is None and k_mask is None:
        return None
    m = None
    if q_mask is not None:
        m = q_mask[:, :, None]
    if k_mask is not None:
        m = k_mask[:, None, :] if m is None else (m & k_mask[:, None, :])
    return ((~m).float() * -1e9)[:, None]  # [B, 1, Tq|1, Tk|1]


class FFN(nn.Module):
    """Dense(ff, gelu) -> Dense(width) -> Dropout(0.1)."""

    def __init__(self, width, ff):
        super().__init__()
        self.up = nn.Linear(width, ff)
        self.down = nn.Linear(ff, width)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return self.drop(self.down(F.gelu(self.up(x))))


class PostLN(nn.Module):
    """keras_bench post_ln (models/lib/transformer.mtl `encoder`)."""

    def __init__(self, width, heads, key_dim, ff, eps=1e-5):
        super().__init__()
        self.att = MHA(width, width, heads, key_dim)
        self.drop = nn.Dropout(0.1)
        self.ln1 = nn.LayerNorm(width, eps=eps)
        self.ff = FFN(width, ff)
        self.ln2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x, mask=None):
        x = self.ln1(x + self.drop(self.att(x, x, mask)))
        return self.ln2(x + self.ff(x))


class PreLN(nn.Module):
    """keras_bench pre_ln (models/lib/transformer.mtl `pre_ln_encoder`)."""

    def __init__(self, width, heads, key_dim, ff):
        super().__init__()
        self.ln1 = nn.LayerNorm(width, eps=1e-6)
        self.att = MHA(width, width, heads, key_dim)
        self.drop = nn.Dropout(0.1)
        self.ln2 = nn.LayerNorm(width, eps=1e-6)
        self.ff = FFN(width, ff)

    def forward(self, x, mask=None):
        h = self.ln1(x)
        x = x + self.drop(self.att(h, h, mask))
        return x + self.ff(self.ln2(x))


class PosEmb(nn.Module):
    """keras-hub PositionEmbedding added to its input (glorot_uniform)."""

    def __init__(self, length, width):
        super().__init__()
        self.w = nn.Parameter(torch.empty(length, width))
        nn.init.xavier_uniform_(self.w)

    def forward(self, x):
        return x + self.w


# --------------------------------------------------------------------------
# Models. Each returns (module, inputs, heads): inputs = [(name, shape,
# dtype, vocab)], per sample; heads = {name: (loss kind, output shape,
# weight)}. The module maps the inputs (in order) to a dict of head outputs
# (logits for ce/bce heads) and may set `self.aux_loss` during forward.
# --------------------------------------------------------------------------


class ShapesMM(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = conv_same(3, 16, 3)
        self.conv2 = conv_same(16, 32, 3)
        self.img_fc = nn.Linear(32 * 8 * 8, 64)
        self.embed = nn.Embedding(1000, 32)
        self.lstm = lstm(32, 32)
        self.fuse = nn.Linear(64 + 32, 64)
        self.cls = nn.Linear(64, 4)
        self.reg = nn.Linear(64, 1)

    def forward(self, image, text):
        x = F.max_pool2d(F.relu(self.conv1(image)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.img_fc(x.flatten(1)))
        t = self.lstm(self.embed(text))
        h = F.relu(self.fuse(torch.cat([x, t], 1)))
        return {"cls": self.cls(h), "reg": self.reg(h)}


def shapes_mm():
    return (ShapesMM(),
            [("image", (3, 32, 32), "f32", None), ("text", (16,), "int", 1000)],
            {"cls": (CE, (4,), 1.0), "reg": (MSE, (1,), 1.0)})


class DigitsMT(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = conv_same(1, 16, 3)
        self.conv2 = conv_same(16, 32, 3)
        self.trunk = nn.Linear(32, 64)
        self.digit = nn.Linear(64, 10)
        self.parity = nn.Linear(64, 1)
        self.ge5 = nn.Linear(64, 1)

    def forward(self, image):
        x = F.max_pool2d(F.relu(self.conv1(image)), 2)
        x = gap2d(F.relu(self.conv2(x)))
        h = F.relu(self.trunk(x))
        return {"digit": self.digit(h), "parity": self.parity(h), "ge5": self.ge5(h)}


def digits_mt():
    return (DigitsMT(), [("image", (1, 8, 8), "f32", None)],
            {"digit": (CE, (10,), 1.0), "parity": (BCE, (1,), 1.0), "ge5": (BCE, (1,), 1.0)})


def digits():
    # models/digits.mtl is the digits_mt architecture.
    return digits_mt()


class Shapes(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = conv_same(3, 16, 3)
        self.conv2 = conv_same(16, 32, 3)
        self.embed = nn.Embedding(32, 16)
        self.lstm = lstm(16, 32)
        self.shape_conv = conv_same(32, 32, 3)
        self.shape = nn.Linear(32, 3)
        self.owner = nn.Linear(32, 4)
        self.total_h = nn.Linear(32 + 32, 64)
        self.total = nn.Linear(64, 1)
        self.mask = nn.Conv2d(32, 1, 1)

    def forward(self, image, caption):
        feat = F.relu(self.conv2(F.max_pool2d(F.relu(self.conv1(image)), 2)))  # [32, 16, 16]
        v = gap2d(feat)
        t = self.lstm(self.embed(caption))
        s = gmp2d(F.relu(self.shape_conv(F.max_pool2d(feat, 2))))
        return {
            "shape": self.shape(s),
            "owner": self.owner(t),
            "total": self.total(F.relu(self.total_h(torch.cat([v, t], 1)))),
            "mask": self.mask(F.interpolate(feat, scale_factor=2, mode="nearest")),
        }


def shapes():
    return (Shapes(),
            [("image", (3, 32, 32), "f32", None), ("caption", (8,), "int", 32)],
            {"shape": (CE, (3,), 1.0), "owner": (CE, (4,), 1.0), "total": (MSE, (1,), 1.0),
             "mask": (BCE, (1, 32, 32), 1.0)})


class Reviews(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5000, 64)
        self.lstm = lstm(64, 128)
        self.sentiment = nn.Linear(128, 3)
        self.stars = nn.Linear(128, 1)

    def forward(self, text):
        h = self.lstm(self.embed(text))
        return {"sentiment": self.sentiment(h), "stars": self.stars(h)}


def reviews():
    return (Reviews(), [("text", (64,), "int", 5000)],
            {"sentiment": (CE, (3,), 1.0), "stars": (MSE, (1,), 1.0)})


class SeedMultitask(nn.Module):
    """models/seed_multitask.mtl (the fixture seed_multitask_small: 8, 16)."""

    def __init__(self, c1=64, c2=128):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3)
        self.conv2 = nn.Conv2d(c1, c2, 3)
        self.classifier = nn.Linear(c2, 10)
        self.segmentation = nn.Conv2d(c2, 1, 1)

    def forward(self, image):
        trunk = F.relu(self.conv2(F.relu(self.conv1(image))))  # [c2, H − 4, W − 4]
        return {"classifier": self.classifier(gap2d(trunk)), "segmentation": self.segmentation(trunk)}


def seed_multitask():
    return (SeedMultitask(), [("image", (3, 64, 64), "f32", None)],
            {"classifier": (CE, (10,), 1.0), "segmentation": (BCE, (1, 60, 60), 1.0)})


class SeedMultimodal(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3)
        self.embed = nn.Embedding(10000, 128)
        self.lstm = lstm(128, 64)
        self.label = nn.Linear(64 + 64, 10)

    def forward(self, image, text):
        v = gap2d(F.relu(self.conv(image)))
        t = self.lstm(self.embed(text))
        return {"label": self.label(torch.cat([v, t], 1))}


def seed_multimodal():
    return (SeedMultimodal(),
            [("image", (3, 64, 64), "f32", None), ("text", (100,), "int", 10000)],
            {"label": (CE, (10,), 1.0)})


class Siamese(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)  # shared encoder: one set of weights
        self.dense = nn.Linear(8, 16)
        self.hidden = nn.Linear(32, 32)
        self.same = nn.Linear(32, 1)

    def enc(self, x):
        return self.dense(gap2d(F.relu(self.conv(x))))

    def forward(self, left, right):
        a, b = self.enc(left), self.enc(right)
        z = torch.cat([(a + b) / 2, a * b], 1)
        return {"same": self.same(F.relu(self.hidden(z)))}


def siamese():
    return (Siamese(),
            [("left", (1, 16, 16), "f32", None), ("right", (1, 16, 16), "f32", None)],
            {"same": (BCE, (1,), 1.0)})


class ConvBN(nn.Module):
    """Conv2D(c, k, same) -> BatchNormalization (Keras defaults) -> ReLU."""

    def __init__(self, cin, c, k):
        super().__init__()
        self.conv = conv_same(cin, c, k)
        self.bn = nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Fusions(nn.Module):
    def __init__(self):
        super().__init__()
        self.cb1 = ConvBN(3, 8, 3)
        self.cb2 = ConvBN(8, 8, 1)
        self.v_fc = nn.Linear(8, 16)
        self.bigru = nn.GRU(6, 16, batch_first=True, bidirectional=True)
        self.gru = LastState(nn.GRU(32, 16, batch_first=True))
        self.n_fc = nn.Linear(8, 16)
        self.n_ln = nn.LayerNorm(16, eps=1e-3)  # Keras LayerNormalization default
        self.n_drop = nn.Dropout(0.1)
        self.theta = nn.Parameter(torch.zeros(3))  # mtl `weighted`
        self.gate = nn.Linear(32, 16)
        self.cls_h = nn.Linear(16 * 9, 32)
        self.cls = nn.Linear(32, 5)
        self.value = nn.Linear(16, 1)
        self.value_aux = nn.Linear(16, 1)
        self.aux_loss = None

    def forward(self, img, seq, num):
        v = self.v_fc(gmp2d(self.cb2(self.cb1(img))))
        s = self.gru(self.bigru(seq)[0])
        n = self.n_drop(self.n_ln(self.n_fc(num)))
        avg = (v + s + n) / 3
        g = torch.sigmoid(self.gate(torch.cat([v, s], 1)))
        gated = g * v + (1.0 - g) * s
        wf = 0.7 * v + 0.3 * s
        top = F.silu(torch.maximum(v, s))
        w = torch.softmax(self.theta, 0)
        weighted = w[0] * v + w[1] * s + w[2] * n
        z = torch.cat([v, s, n, avg, weighted, wf, gated, v + n, top], 1)
        value = self.value(avg)
        value_aux = self.value_aux(n)
        # keras_bench AuxMse: 0.1 * mse(value, stop_gradient(value_aux))
        self.aux_loss = 0.1 * torch.mean(torch.square(value.float() - value_aux.detach().float()))
        return {"cls": self.cls(F.relu(self.cls_h(z))), "value": value, "value_aux": value_aux}


def fusions():
    # value's weight 0.5 is models/fusions.mtl's (keras_bench leaves it at 1).
    return (Fusions(),
            [("img", (3, 16, 16), "f32", None), ("seq", (10, 6), "f32", None), ("num", (8,), "f32", None)],
            {"cls": (CE, (5,), 1.0), "value": (HUBER, (1,), 0.5), "value_aux": (MAE, (1,), 1.0)})


class Captions(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_same(3, 16, 3)
        self.patch = nn.Conv2d(16, 32, 4, stride=4)
        self.patch_pos = PosEmb(16, 32)
        self.patch_enc = PreLN(32, 2, 16, 64)
        self.patch_ln = nn.LayerNorm(32, eps=1e-3)  # Keras LayerNormalization default
        self.embed = nn.Embedding(32, 32)
        self.word_pos = PosEmb(8, 32)
        self.word_enc = PostLN(32, 2, 16, 64)
        self.xattn = MHA(32, 32, 2, 16)
        self.shape = nn.Linear(32, 3)
        self.owner = nn.Linear(32, 4)
        self.total_h = nn.Linear(32, 64)
        self.total = nn.Linear(64, 1)

    def forward(self, image, caption):
        p = F.max_pool2d(F.relu(self.stem(image)), 2)  # [16, 16, 16]
        p = self.patch(p).flatten(2).transpose(1, 2)  # [16 patches, 32]
        p = self.patch_ln(self.patch_enc(self.patch_pos(p)))
        keep = caption != 0  # Embedding(mask_zero=True)
        w = self.word_enc(self.word_pos(self.embed(caption)), attention_mask(keep, keep))
        fused = self.xattn(w, p, attention_mask(keep, None))
        # GlobalAveragePooling1D over the masked sequence: unmasked positions only
        m = keep.to(w.dtype)[:, :, None]
        pooled = ((w + fused) * m).sum(1) / m.sum(1).clamp_min(1.0)
        return {
            "shape": self.shape(p.mean(1)),
            "owner": self.owner(w[:, 0]),
            "total": self.total(F.relu(self.total_h(pooled))),
        }


def captions():
    return (Captions(),
            [("image", (3, 32, 32), "f32", None), ("caption", (8,), "int", 32)],
            {"shape": (CE, (3,), 1.0), "owner": (CE, (4,), 1.0), "total": (MSE, (1,), 1.0)})


class Mixture(nn.Module):
    """Σᵢ softmax(W·x + b)ᵢ · eᵢ (mtl's `mixture`)."""

    def __init__(self, din, k):
        super().__init__()
        self.gate = nn.Linear(din, k)

    def forward(self, experts, x):
        g = torch.softmax(self.gate(x), -1)
        return torch.einsum("bk,bkd->bd", g, torch.stack(experts, 1))


class MMoE(nn.Module):
    def __init__(self):
        super().__init__()
        self.experts = nn.ModuleList([nn.Linear(16, 32) for _ in range(3)])
        self.towers = nn.ModuleDict({
            t: nn.ModuleDict({"gate": Mixture(16, 3), "h": nn.Linear(32, 16), "out": nn.Linear(16, 1)})
            for t in ("y1", "y2")
        })

    def forward(self, x):
        experts = [F.relu(e(x)) for e in self.experts]
        outs = {}
        for t, m in self.towers.items():
            outs[t] = m["out"](F.relu(m["h"](m["gate"](experts, x))))
        return outs


def mmoe():
    return (MMoE(), [("x", (16,), "f32", None)], {"y1": (MSE, (1,), 1.0), "y2": (MSE, (1,), 1.0)})


class Overlap(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = conv_same(1, 16, 3)
        self.conv2 = conv_same(16, 32, 3)
        self.trunk = nn.Linear(32 * 7 * 7, 64)
        self.towers = nn.ModuleDict({t: nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 6))
                                     for t in ("left", "right")})

    def forward(self, image):
        x = F.max_pool2d(F.relu(self.conv1(image)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        trunk = F.relu(self.trunk(x.flatten(1)))
        return {t: m(trunk) for t, m in self.towers.items()}


def overlap():
    return (Overlap(), [("image", (1, 28, 28), "f32", None)],
            {"left": (CE, (6,), 1.0), "right": (CE, (6,), 1.0)})


class Tones(nn.Module):
    def __init__(self):
        super().__init__()
        self.a1 = conv_same(1, 16, 3)
        self.a2 = conv_same(16, 32, 3)
        self.audio_fc = nn.Linear(32 * 10 * 12, 32)  # [40, 50] pooled twice (floor)
        self.i1 = conv_same(1, 16, 3)
        self.i2 = conv_same(16, 32, 3)
        self.image_fc = nn.Linear(32, 32)
        self.sound_class = nn.Linear(32, 4)
        self.shape = nn.Linear(32, 3)
        self.agree_h = nn.Linear(64, 32)
        self.agree = nn.Linear(32, 1)

    def forward(self, sound, image):
        a = F.max_pool2d(F.relu(self.a1(sound[:, None])), 2)  # the log-mel features as one channel
        a = F.max_pool2d(F.relu(self.a2(a)), 2)
        heard = F.relu(self.audio_fc(a.flatten(1)))
        s = F.max_pool2d(F.relu(self.i1(image)), 2)
        seen = F.relu(self.image_fc(gmp2d(F.relu(self.i2(s)))))
        return {
            "sound_class": self.sound_class(heard),
            "shape": self.shape(seen),
            "agree": self.agree(F.relu(self.agree_h(torch.cat([heard, seen], 1)))),
        }


def tones():
    return (Tones(), [("sound", (40, 50), "f32", None), ("image", (1, 28, 28), "f32", None)],
            {"sound_class": (CE, (4,), 1.0), "shape": (CE, (3,), 1.0), "agree": (BCE, (1,), 1.0)})


class Clip(nn.Module):
    """models/clip.mtl. The caption LSTM runs over every position: the padding
    mask (which keeps the state through padded steps, as Keras does) is left
    out, which can only make this peer faster."""

    def __init__(self):
        super().__init__()
        self.conv1 = conv_same(1, 16, 3)
        self.conv2 = conv_same(16, 32, 3)
        self.img_fc = nn.Linear(32 * 7 * 7, 64)
        self.embed = nn.Embedding(32, 32)
        self.lstm = lstm(32, 64)
        self.img_proj = nn.Linear(64, 32)
        self.txt_proj = nn.Linear(64, 32)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.left_fc = nn.Linear(64, 6)
        self.right_fc = nn.Linear(64, 6)
        self.aux_loss = None

    def forward(self, image, caption):
        x = F.max_pool2d(F.relu(self.conv1(image)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        img = F.relu(self.img_fc(x.flatten(1)))
        txt = self.lstm(self.embed(caption))
        # mtl's contrastive(learn_temperature = true): CLIP's symmetric InfoNCE
        a = F.normalize(self.img_proj(img).float(), dim=-1)
        b = F.normalize(self.txt_proj(txt).float(), dim=-1)
        logits = self.logit_scale.exp().clamp(max=100.0) * a @ b.T
        labels = torch.arange(logits.shape[0], device=logits.device)
        self.aux_loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        return {"left": self.left_fc(img), "right": self.right_fc(txt)}


def clip():
    return (Clip(), [("image", (1, 28, 28), "f32", None), ("caption", (5,), "int", 32)],
            {"left": (CE, (6,), 1.0), "right": (CE, (6,), 1.0)})


class TextTransformer(nn.Module):
    """../shared/fixtures/text_transformer.mtl: one post-LN block (eps 1e-3)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.pos = PosEmb(12, 16)
        self.enc = PostLN(16, 2, 8, 32, eps=1e-3)
        self.topic = nn.Linear(16, 3)
        self.score = nn.Linear(16, 1)

    def forward(self, text):
        keep = text != 0  # Embedding(mask_zero=True)
        w = self.enc(self.pos(self.embed(text)), attention_mask(keep, keep))
        m = keep.to(w.dtype)[:, :, None]
        pooled = (w * m).sum(1) / m.sum(1).clamp_min(1.0)
        return {"topic": self.topic(pooled), "score": self.score(pooled)}


def text_transformer():
    return (TextTransformer(), [("text", (12,), "int", 50)],
            {"topic": (CE, (3,), 1.0), "score": (MSE, (1,), 1.0)})


class FusionOps(nn.Module):
    """../shared/fixtures/fusion_ops.mtl."""

    def __init__(self):
        super().__init__()
        self.a_proj = nn.Linear(12, 16)
        self.b_proj = nn.Linear(20, 16)
        self.fc = nn.ModuleDict({k: nn.Linear(16, 2) for k in ("s", "m", "avg", "mx")})

    def forward(self, a, b):
        pa, pb = self.a_proj(a), self.b_proj(b)
        fused = {"s": pa + pb, "m": pa * pb, "avg": (pa + pb) / 2, "mx": torch.maximum(pa, pb)}
        return {k: self.fc[k](v) for k, v in fused.items()}


def fusion_ops():
    return (FusionOps(), [("a", (12,), "f32", None), ("b", (20,), "f32", None)],
            {k: (MSE, (2,), 1.0) for k in ("s", "m", "avg", "mx")})


def seed_multitask_small():
    return (SeedMultitask(8, 16), [("image", (3, 32, 32), "f32", None)],
            {"classifier": (CE, (10,), 1.0), "segmentation": (BCE, (1, 28, 28), 1.0)})


class MMoEFixture(nn.Module):
    """../shared/fixtures/mmoe.mtl: three experts of 16, a gate per head."""

    def __init__(self):
        super().__init__()
        self.experts = nn.ModuleList([nn.Linear(12, 16) for _ in range(3)])
        self.gates = nn.ModuleDict({t: Mixture(12, 3) for t in ("click", "buy")})
        self.fc = nn.ModuleDict({t: nn.Linear(16, 1) for t in ("click", "buy")})

    def forward(self, x):
        experts = [F.relu(e(x)) for e in self.experts]
        return {t: self.fc[t](g(experts, x)) for t, g in self.gates.items()}


def mmoe_fixture():
    return (MMoEFixture(), [("x", (12,), "f32", None)], {"click": (BCE, (1,), 1.0), "buy": (BCE, (1,), 1.0)})


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


# --------------------------------------------------------------------------
# Data, loss, timing
# --------------------------------------------------------------------------


def make_batches(inputs, heads, batch, device, seed=0):
    """N_BATCHES batches of random inputs (floats in [0, 1), int64 token ids in
    [0, vocab)) and zero targets (class 0 for ce heads), as keras_bench."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(N_BATCHES):
        xs = []
        for _, shape, dtype, vocab in inputs:
            if dtype == "int":
                xs.append(torch.randint(0, vocab, (batch,) + shape, generator=g, dtype=torch.int64))
            else:
                xs.append(torch.rand((batch,) + shape, generator=g, dtype=torch.float32))
        ys = {}
        for name, (kind, shape, _) in heads.items():
            if kind == CE:
                ys[name] = torch.zeros(batch, dtype=torch.int64)
            else:
                ys[name] = torch.zeros((batch,) + shape, dtype=torch.float32)
        batches.append(([x.to(device) for x in xs], {k: y.to(device) for k, y in ys.items()}))
    return batches


def head_loss(kind, out, y):
    out = out.float()
    if kind == CE:
        return F.cross_entropy(out, y)
    if kind == BCE:
        return F.binary_cross_entropy_with_logits(out, y)
    if kind == MSE:
        return F.mse_loss(out, y)
    if kind == HUBER:
        return F.huber_loss(out, y, delta=1.0)
    if kind == MAE:
        return F.l1_loss(out, y)
    raise ValueError(kind)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--mode", default="eager", choices=["eager", "compile"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--steps", type=int, default=3 * N_BATCHES,
                    help="timed training steps per repeat (default 60: keras_bench's 3 epochs of 20 batches)")
    ap.add_argument("--infer-steps", type=int, default=N_BATCHES,
                    help="timed inference steps per repeat (default 20: one keras predict pass)")
    ap.add_argument("--warmup", type=int, default=N_BATCHES,
                    help="untimed warm-up steps, compilation included (default 20: one pass)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs; the median is reported")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--infer-only", action="store_true",
                    help="time inference alone (other batch sizes than training's)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads(N) on CPU (default: PyTorch's own default, untouched)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes; XLA autotunes too
    module, inputs, heads = MODELS[args.model]()
    module = module.to(dev)
    opt = torch.optim.Adam(module.parameters(), lr=args.lr)
    batches = make_batches(inputs, heads, args.batch_size, dev, args.seed)
    amp = args.precision == "bf16"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def forward_loss(model, xs, ys):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            outs = model(*xs)
            loss = sum(w * head_loss(kind, outs[k], ys[k]) for k, (kind, _, w) in heads.items())
            aux = getattr(module, "aux_loss", None)
            if aux is not None:
                loss = loss + aux
        return loss

    def train_step(model, xs, ys):
        opt.zero_grad(set_to_none=True)
        loss = forward_loss(model, xs, ys)
        loss.backward()
        opt.step()
        return loss

    def infer_step(model, xs):
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            return model(*xs)

    # Training: compile the whole step (forward, loss, backward, Adam) if it
    # works, else the model alone, else run eagerly; say which in the JSON.
    compile_scope = None
    errors = []
    train_fn = lambda xs, ys: train_step(module, xs, ys)  # noqa: E731
    module.train()
    if args.mode == "compile":
        candidates = [
            ("step", torch.compile(lambda xs, ys: train_step(module, xs, ys))),
            ("model", (lambda cm: (lambda xs, ys: train_step(cm, xs, ys)))(torch.compile(module))),
        ]
        for scope, fn in candidates:
            try:
                for i in range(2):  # compile (and a first recompile, if any) before the warm-up
                    fn(*batches[i])
                sync()
                train_fn, compile_scope = fn, scope
                break
            except Exception as e:  # noqa: BLE001
                errors.append(f"{scope}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                torch._dynamo.reset()
                opt.zero_grad(set_to_none=True)
        else:
            compile_scope = "none"

    def run_train(steps, offset=0):
        for i in range(steps):
            xs, ys = batches[(offset + i) % N_BATCHES]
            train_fn(xs, ys)

    train_runs = []
    if not args.infer_only:
        run_train(args.warmup)
        sync()
    for _ in range(0 if args.infer_only else args.repeats):
        sync()
        t = time.perf_counter()
        run_train(args.steps)
        sync()
        train_runs.append(args.steps * args.batch_size / (time.perf_counter() - t))

    # Inference: the forward alone, eval mode (dropout off, batch-norm running
    # statistics), under inference_mode.
    module.eval()
    infer_model = module
    infer_compiled = None
    if args.mode == "compile":
        try:
            cm = torch.compile(module)
            infer_step(cm, batches[0][0])
            sync()
            infer_model, infer_compiled = cm, True
        except Exception as e:  # noqa: BLE001
            errors.append(f"infer: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            torch._dynamo.reset()
            infer_compiled = False

    def run_infer(steps):
        for i in range(steps):
            infer_step(infer_model, batches[i % N_BATCHES][0])

    run_infer(args.warmup)
    sync()
    infer_runs = []
    for _ in range(args.repeats):
        sync()
        t = time.perf_counter()
        run_infer(args.infer_steps)
        sync()
        infer_runs.append(args.infer_steps * args.batch_size / (time.perf_counter() - t))

    res = {
        "model": args.model,
        "device": args.device,
        "mode": args.mode,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "train_samples_per_sec": statistics.median(train_runs) if train_runs else None,
        "infer_samples_per_sec": statistics.median(infer_runs),
    }
    if args.repeats > 1:
        res["train_runs"] = train_runs
        res["infer_runs"] = infer_runs
    if args.mode == "compile":
        res["compile_scope"] = compile_scope
        res["compile_fallback"] = compile_scope != "step" or not infer_compiled
        if errors:
            res["compile_errors"] = errors
    res["torch"] = torch.__version__
    res["threads"] = torch.get_num_threads()
    assert all(math.isfinite(v) for v in train_runs + infer_runs)
    print(json.dumps(res))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
