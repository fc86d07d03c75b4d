"""Writes the `.pt2` test fixtures (torch.export archives) in this folder.

Needs PyTorch (`pip install torch`); LayerScope and its tests do not: they read
the archives' JSON directly.  Run from the repository root:

    python3 tests/data/make_pt2_fixtures.py

Writes:
- small_cnn.pt2: Conv2d(3->8, 3x3, pad 1) + BatchNorm + ReLU, MaxPool, Conv2d(8->16, 3x3,
  stride 2) + ReLU, global average pool, Linear(16->10), input 1x3x32x32.
- small_cnn_core_aten.pt2: the same after run_decompositions() (the core ATen op set:
  aten.convolution, _native_batch_norm_legit_no_training, addmm, ...).
- transformer_block.pt2: one pre-norm transformer block (LayerNorm, 2-head self-attention
  with q/k/v/out projections, LayerNorm, MLP 32->64->32 with GELU), input 1x8x32.
- transformer_block_dynamic.pt2: the same block with a symbolic token count (Dim "tokens").
The weights are random (seeded): the importer only reads their shapes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


class SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.block(self.pool(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        batch, tokens, dim = x.shape
        head_dim = dim // self.heads

        def split(t):
            return t.view(batch, tokens, self.heads, head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) / head_dim ** 0.5
        attended = torch.matmul(scores.softmax(dim=-1), v)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, tokens, dim))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, hidden: int = 64):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def export(module: nn.Module, example: torch.Tensor, name: str, core_aten: bool = False,
           dynamic_shapes=None) -> None:
    module.eval()
    program = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes)
    if core_aten:  # the decomposed form (aten.convolution, addmm, ...) that backends consume
        program = program.run_decompositions()
    path = HERE / name
    torch.export.save(program, str(path))
    print(f"{path}: {path.stat().st_size} bytes, {len(program.graph.nodes)} FX nodes")


if __name__ == "__main__":
    torch.manual_seed(0)
    export(SmallCnn(), torch.randn(1, 3, 32, 32), "small_cnn.pt2")
    export(SmallCnn(), torch.randn(1, 3, 32, 32), "small_cnn_core_aten.pt2", core_aten=True)
    export(TransformerBlock(), torch.randn(1, 8, 32), "transformer_block.pt2")
    tokens = torch.export.Dim("tokens", min=2, max=512)
    export(TransformerBlock(), torch.randn(1, 8, 32), "transformer_block_dynamic.pt2",
           dynamic_shapes={"x": {1: tokens}})
