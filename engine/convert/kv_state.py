"""KV cache as Core ML state (placeholder, filled in below)."""
from __future__ import annotations


def cache_update(ctx, new, past_index: int, output_index: int, role: str):
    return None
