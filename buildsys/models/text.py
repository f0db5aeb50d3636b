"""A BERT-style text encoder in plain torch, and the ONNX files builds.yaml names.

Why not Hugging Face ``transformers``: its BertModel exports to the same graph (embeddings,
masked self-attention, GELU feed-forward, post-norm), but brings transformers, tokenizers,
safetensors and huggingface_hub into the builder for one random-weight model, and its
version would enter the key of every entry built from it. This module is BERT's arithmetic
(``BertModel`` with ``hidden_act="gelu"``, absolute positions, one token type) and nothing else.

``python -m buildsys.models.text OUT_DIR`` (``make onnx-models``) writes, with seeded random weights:

- ``text_encoder.onnx``: 2 layers, hidden 128, 4 heads, vocabulary 1000; inputs ``input_ids``
  and ``attention_mask`` (int64, [batch, sequence]); opset 17, batch and sequence dynamic;
- ``bert_base.onnx``: BERT-base's shape (12 layers, hidden 768, 12 heads, vocabulary 30522,
  110 M parameters, 438 MB), the same axes: the encoder ``buildsys bench`` compares with onnxruntime;
- ``resnet18.onnx``: torchvision's resnet18, batch dynamic: an image model as another team
  would hand it over.

They are outputs, never committed (.gitignore).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn

OPSET = 17


class EncoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attention_out = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=1e-12)

    def _split(self, x):
        batch, length, hidden = x.shape
        return x.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2)

    def forward(self, x, additive_mask):
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + additive_mask
        context = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = self.attention_norm(x + self.attention_out(context))
        return self.output_norm(x + self.output(nn.functional.gelu(self.intermediate(x))))


class TextEncoder(nn.Module):
    """``forward(input_ids, attention_mask)`` -> (last hidden state [B, S, H], pooled [B, H])."""

    def __init__(self, vocab: int = 1000, hidden: int = 128, layers: int = 2, heads: int = 4,
                 intermediate: int | None = None, max_positions: int = 512):
        super().__init__()
        self.words = nn.Embedding(vocab, hidden)
        self.positions = nn.Embedding(max_positions, hidden)
        self.token_types = nn.Embedding(2, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, intermediate or 4 * hidden) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)

    def forward(self, input_ids, attention_mask):
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device).unsqueeze(0)
        x = self.words(input_ids) + self.positions(positions) + self.token_types.weight[0]
        x = self.embedding_norm(x)
        # BERT's extended mask: 0 where attended, a large negative number where padded
        additive = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, additive)
        return x, torch.tanh(self.pooler(x[:, 0]))


def text_encoder(**kwargs) -> TextEncoder:
    """The small encoder (the callable route: ``source: buildsys.models.text:text_encoder``)."""
    return TextEncoder(**kwargs)


def bert_base() -> TextEncoder:
    return TextEncoder(vocab=30522, hidden=768, layers=12, heads=12, intermediate=3072)


def export_text_encoder(model: nn.Module, path: Path, sequence: int = 16) -> Path:
    """To ONNX opset 17, batch and sequence axes dynamic."""
    import warnings

    ids = torch.randint(0, model.words.num_embeddings, (2, sequence))
    mask = torch.ones(2, sequence, dtype=torch.int64)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (ids, mask), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state", "pooler_output"], dynamic_axes=axes)
    return path


def export_image_model(model: nn.Module, path: Path, size: int = 224) -> Path:
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.rand(1, 3, size, size),), str(path), dynamo=False,
                          opset_version=OPSET, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    written = [export_text_encoder(text_encoder(), args.out_dir / "text_encoder.onnx")]
    import torchvision

    torch.manual_seed(0)
    written.append(export_image_model(torchvision.models.resnet18(weights=None), args.out_dir / "resnet18.onnx"))
    torch.manual_seed(0)
    written.append(export_text_encoder(bert_base(), args.out_dir / "bert_base.onnx", sequence=128))
    for path in written:
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
