"""Layouts do not depend on the process: the same model gives the same drawing in every run.

Python randomises the order in which a set of strings iterates, per process (PYTHONHASHSEED).
Geometry that walks a set lands elsewhere on the next start, and the order of a layout's
collapsed groups (`members`, what the scene and the minimap walk) changed between runs of the
same file.  Each case lays the same models out in two child processes with different hash seeds
and compares everything a layout carries, in order.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_gui_open import residual_model
from engine.transformer_samples import TransformerConfig, write_transformer

ROOT = Path(__file__).resolve().parents[2]

# Lays each model out the ways the app does and prints every layout, in its own order.
CHILD = r"""
import json, sys
from importers import open_model
from engine.analysis import analyze
from engine.folded_layout import FoldedLayouts
from engine.grouping import folded_start, namespace_groups
from engine.layout import layout_graph, node_groups

def described(layout):
    return {"boxes": [[k, [round(c, 3) for c in rect]] for k, rect in layout.boxes.items()],
            "edges": [[e.source, e.target, e.value, list(e.values), [[round(c, 3) for c in p] for p in e.points]]
                      for e in layout.edges],
            "layers": list(layout.layers.items()), "members": [[k, list(v)] for k, v in layout.members.items()],
            "box_for": sorted(layout.box_for.items()), "hidden": sorted(layout.hidden),
            "size": [layout.width, layout.height, layout.left, layout.top], "method": layout.method}

out = {}
for path in sys.argv[1:]:
    analysis = analyze(open_model(path))
    layouts = {"whole": layout_graph(analysis), "whole, constants": layout_graph(analysis, include_constants=True)}
    for by in ("stage", "namespace"):
        groups = node_groups(analysis, by)
        if groups:
            layouts[by + ", collapsed"] = layout_graph(analysis, groups=groups, collapsed=frozenset(groups))
            some = frozenset(list(groups)[::2])
            layouts[by + ", some collapsed"] = layout_graph(analysis, groups=groups, collapsed=some)
    groups = namespace_groups(analysis)
    if groups:
        for constants in (False, True):
            folded = FoldedLayouts(analysis, groups, constants)
            layouts[f"folded {constants}"] = folded.compose(folded_start(groups, analysis))
            layouts[f"folded {constants}, all open"] = folded.compose(frozenset())
    out[path] = {name: described(layout) for name, layout in layouts.items()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("determinism")
    return [str(residual_model(folder / "residual.onnx", 600)),
            str(write_transformer(folder / "transformer.onnx", TransformerConfig(layers=3)))]


def _layouts_with_hash_seed(seed: str, models: list[str]) -> dict:
    env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", CHILD, *models], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_layouts_are_the_same_whatever_the_hash_seed(models):
    first = _layouts_with_hash_seed("1", models)
    second = _layouts_with_hash_seed("2", models)
    for path in models:
        assert first[path].keys() == second[path].keys()
        assert len(first[path]) >= 6  # whole, with constants, grouped and folded layouts were made
        for name, layout in first[path].items():
            assert layout["boxes"], f"{Path(path).name} {name}: nothing laid out"
            for field, value in layout.items():
                assert value == second[path][name][field], \
                    f"{Path(path).name}, {name}: '{field}' differs between hash seeds 1 and 2"
