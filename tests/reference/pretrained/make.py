#!/usr/bin/env python3
"""Tiny random Hugging Face checkpoints and their `transformers` outputs, for
tests/pretrained.rs. Run once with torch + transformers (versions recorded
in versions.txt); the outputs are committed, so `cargo test` needs no Python.

    python tests/reference/pretrained/make.py
"""
import json
import pathlib

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, ViTConfig, ViTModel

HERE = pathlib.Path(__file__).resolve().parent
torch.manual_seed(0)
rng = np.random.default_rng(0)


def tokenizer(d, size):
    """A BERT WordPiece tokenizer over a small vocabulary ([PAD] is id 0),
    adding [CLS] ... [SEP] as BERT's does."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(size - 5)]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(d / "tokenizer.json"))


def bert():
    d = HERE / "bert"
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=40, type_vocab_size=2,
                     layer_norm_eps=1e-12, pad_token_id=0)
    m = BertModel(cfg).eval()
    # Non-trivial norms and biases: random init leaves LayerNorm at 1/0.
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "LayerNorm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    m.save_pretrained(d)
    tokenizer(d, cfg.vocab_size)
    # Ids with padding at the end and in the middle of a row (the mask is id == 0).
    ids = rng.integers(5, cfg.vocab_size, size=(4, 12))
    ids[0, 8:] = 0
    ids[1, 3] = 0
    ids[2, 1:] = 0
    mask = torch.tensor(ids != 0, dtype=torch.long)
    with torch.no_grad():
        out = m(input_ids=torch.tensor(ids), attention_mask=mask)
    save_file({"text": torch.tensor(ids, dtype=torch.int64)}, HERE / "bert.inputs.safetensors")
    save_file({"sequence": out.last_hidden_state.contiguous(), "pooled": out.pooler_output.contiguous()},
              HERE / "bert.expected.safetensors")


def vit():
    d = HERE / "vit"
    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=37, layer_norm_eps=1e-12)
    m = ViTModel(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "layernorm" in n or n.endswith("bias") or "cls_token" in n:
                p.add_(0.1 * torch.randn_like(p))
    m.save_pretrained(d)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    (d / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": mean,
        "image_std": std, "image_processor_type": "ViTImageProcessor", "resample": 2,
        "rescale_factor": 1 / 255, "size": {"height": 16, "width": 16}}, indent=2))
    images = rng.random((3, 3, 16, 16)).astype(np.float32)  # in [0, 1], as mtl decodes images
    pixel = (torch.tensor(images) - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    with torch.no_grad():
        out = m(pixel_values=pixel)
    save_file({"image": torch.tensor(images)}, HERE / "vit.inputs.safetensors")
    save_file({"sequence": out.last_hidden_state.contiguous(), "pooled": out.pooler_output.contiguous()},
              HERE / "vit.expected.safetensors")


import sys
if sys.argv[1:] == ["--tokenizer-only"]:
    tokenizer(HERE / "bert", 99)
else:
    bert()
    vit()
(HERE / "versions.txt").write_text(f"torch {torch.__version__}\ntransformers {transformers.__version__}\n")
