"""Shared by the tests of engine.folded_layout's reuse (test_folded_prepare, test_twin_pieces): a
generated decoder with repeated blocks (both styles) and a drawing compared whole."""
from __future__ import annotations

import pytest

from engine.analysis import analyze
from engine.grouping import folded_start, namespace_groups
from engine.transformer_samples import STYLES, TransformerConfig, write_transformer
from importers import open_model


@pytest.fixture(scope="module", params=STYLES)
def decoder(request, tmp_path_factory):
    config = TransformerConfig(layers=4, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5,
                               style=request.param)
    path = write_transformer(tmp_path_factory.mktemp(request.param) / "decoder.onnx", config)
    analysis = analyze(open_model(str(path)))
    groups = namespace_groups(analysis)
    return analysis, groups, folded_start(groups, analysis)


def inside(groups, block: str) -> set[str]:
    """`block` and every group inside it."""
    name = groups[block].name + "/"
    return {g for g, group in groups.items() if g == block or group.name.startswith(name)}


def drawing(layout) -> tuple:
    """Boxes, edges with every point and tensor name, frames, members, size and method."""
    return (layout.boxes, [tuple(e) for e in layout.edges], dict(layout.frames), dict(layout.members),
            layout.width, layout.height, layout.method)
