"""The search of a folded model finds what a person can reach: nodes inside collapsed groups (Enter
opens their groups), not the constants folded into their consumers while Constants is off; after
a relayout (a block opened, constants shown) the results are those of a new search, the text
match reused (it is about node ids, not positions)."""
from __future__ import annotations

import pytest

import gui.folded_groups as folded_groups
import gui.graph_drawing as graph_drawing
from benchmarks.bench_gui_open import residual_model
from engine.grouping import FOLD_NODES_ENVIRONMENT
from engine.transformer_samples import TransformerConfig, write_transformer
from gui.graph_style import is_io
from tests.gui.gui_fixtures import LOAD_TIMEOUT_MS, open_and_wait, settings, window  # noqa: F401 (fixtures)

BLOCK = "group:namespace:model/layers.1"


@pytest.fixture(scope="module")
def transformers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("search-folded")
    small = TransformerConfig(layers=4, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5)
    return write_transformer(folder / "decoder.onnx", small), residual_model(folder / "residual.onnx", 300)


@pytest.fixture
def folded(qtbot, window, transformers, monkeypatch):
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "100")
    monkeypatch.setattr(folded_groups, "PREPARE_DELAY_MS", 10**9)  # no background thread in these tests
    open_and_wait(qtbot, window, transformers[0])
    assert window.loaded.groups and window.loaded.collapsed and not window.loaded.include_constants
    yield window
    folded_groups.cancel_preparation()


def reachable(window, text: str) -> list[str]:
    """What the search should find, from the drawn boxes and each node's box (scene.box_id): the
    nodes matching by name, id or op type whose box is drawn (their own, or a collapsed group's,
    constants only when shown), and the drawn groups, inputs and outputs matching by name; in the
    order of their boxes, then execution order."""
    needle, scene, loaded = text.lower(), window.scene, window.loaded
    found = {}
    for box, position in scene.node_index.items():
        name = scene.groups[box].name if box in scene.groups else box if is_io(box) else None
        if name is not None and needle in name.lower():
            found[box] = (position, -1)
    for position, node_id in enumerate(loaded.analysis.order):
        node = loaded.analysis.graph.node(node_id)
        if not any(needle in s.lower() for s in (node.name, node_id, node.op_type)):
            continue
        box = scene.box_id(node_id)
        folded_constant = loaded.analysis.nodes[node_id].is_constant and not loaded.include_constants
        if box is not None and (box == node_id or not folded_constant):
            found[node_id] = (scene.node_index[box], position)
    return sorted(found, key=found.__getitem__)


def search(qtbot, window, text: str) -> list[str]:
    window.search_field.setText(text)
    window._search_changed(text)  # as when typing pauses (the model is small: at once anyway)
    return list(window._search_matches)


def test_folded_constants_are_not_counted_and_every_match_is_reachable(qtbot, folded):
    window, analysis = folded, folded.loaded.analysis
    matches = search(qtbot, window, "/")
    constants = [n for n in analysis.order if analysis.nodes[n].is_constant]
    assert constants and not set(constants) & set(matches)  # all folded inside collapsed groups
    assert matches == reachable(window, "/")
    assert window.search_label.text() == f"{len(matches)} found"
    assert "folded" in window.search_label.toolTip()
    # Enter goes to a match hidden in a collapsed group: its groups open and it is drawn.
    hidden = next(i for i, n in enumerate(matches) if n in analysis.nodes and n not in window.scene.node_index)
    window._search_position = hidden - 1
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.search_next()
    assert matches[hidden] in window.scene.node_index


def test_constants_shown_are_counted_inside_collapsed_groups(qtbot, folded):
    window, analysis = folded, folded.loaded.analysis
    hidden_count = len(search(qtbot, window, "shape"))
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.set_show_constants(True)
    assert window.loaded.include_constants and window.loaded.collapsed
    matches = list(window._search_matches)  # searched again after the relayout
    shape_constants = [n for n in analysis.order if analysis.nodes[n].is_constant
                       and "shape" in analysis.graph.node(n).op_type.lower()]
    assert shape_constants and set(shape_constants) <= set(matches)
    assert len(matches) > hidden_count and matches == reachable(window, "shape")
    assert window.search_label.text() == f"{len(matches)} found"


def test_after_a_block_opens_the_results_are_a_new_searchs_with_the_text_match_reused(qtbot, folded):
    window = folded
    search(qtbot, window, "/")
    kept = graph_drawing.text_matches(window.loaded.analysis, "/")
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window._relayout_groups(window.loaded.collapsed - {BLOCK}, "Expanding")
    assert BLOCK not in window.scene.node_index and any(n in window.scene.node_index for n in window._search_matches)
    assert graph_drawing.text_matches(window.loaded.analysis, "/") is kept  # not matched again
    assert window._search_matches == reachable(window, "/")
    assert window.search_label.text() == f"{len(window._search_matches)} found"


def test_another_model_opened_is_searched_anew(qtbot, folded, transformers):
    window = folded
    first = search(qtbot, window, "/")
    open_and_wait(qtbot, window, transformers[1])
    matches = list(window._search_matches)  # the search text stays: searched in the new model
    assert len(matches) > len(window.loaded.analysis.order) / 2 and not set(matches) & set(first)
    assert matches == reachable(window, "/")


def test_a_group_hidden_in_a_collapsed_one_is_counted_once_drawn(qtbot, folded):
    """Enter can go to a node inside collapsed groups (it opens them), not to a group hidden inside
    one: the count (and its tooltip) says so, and counts the group once its box is drawn."""
    window, inner = folded, BLOCK + "/self_attn"
    assert BLOCK in window.loaded.collapsed and inner in window.loaded.groups
    matches = search(qtbot, window, "layers.1/self_attn")
    members = window.loaded.groups[inner].members
    assert inner not in matches and set(matches) <= set(members) and matches, matches
    tooltip = window.search_label.toolTip()
    assert "group boxes drawn" in tooltip and "a group inside a collapsed one counts once it is drawn" in tooltip
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.toggle_group(BLOCK, False)
    assert inner in window.loaded.collapsed and inner in window.scene.node_index  # its box drawn in the frame
    matches = search(qtbot, window, "layers.1/self_attn")
    assert matches[0] == inner, matches
    assert matches == reachable(window, "layers.1/self_attn")
