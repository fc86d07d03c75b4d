"""The text match kept from the last search (gui.graph_drawing.text_matches) goes with its model:
another model opened, or the window closed, drops it (a few MB for "/" at 100,000 nodes), and a
search after an open finds the new model's nodes, even when the same file was rewritten."""
from __future__ import annotations

import gc
import weakref

import onnx
from onnx import TensorProto, helper

import gui.graph_drawing as graph_drawing
from tests.gui.gui_fixtures import no_questions, open_and_wait, settings, window  # noqa: F401 (fixtures)


def chain_model(path, prefix: str, op_type: str, count: int = 12):
    """`count` nodes of `op_type` in a row, named `prefix`/step<i>/`op_type`."""
    nodes, x = [], "input"
    for i in range(count):
        out = f"{prefix}/step{i}"
        nodes.append(helper.make_node(op_type, [x], [out], name=f"{out}/{op_type}"))
        x = out
    graph = helper.make_graph(nodes, prefix, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def search(window, text: str) -> list[str]:
    window.search_field.setText(text)
    window._search_changed(text)  # as when typing pauses (the models are small: at once anyway)
    return list(window._search_matches)


def kept_match():
    """A weak reference to the kept TextMatches (None when nothing is kept)."""
    matches = graph_drawing._last_text_matches[2]
    return None if matches is None else weakref.ref(matches)


def named_nodes(window, text: str) -> set[str]:
    analysis = window.loaded.analysis
    return {n for n in analysis.order if text in analysis.graph.node(n).name.lower()}


def found_nodes(window) -> set[str]:
    """The nodes among the search's matches (not the graph inputs and outputs it also finds)."""
    return set(window._search_matches) & set(window.loaded.analysis.nodes)


def test_another_model_opened_drops_the_kept_match_and_is_searched_anew(qtbot, window, tmp_path):
    first = chain_model(tmp_path / "first.onnx", "alpha", "Relu")
    second = chain_model(tmp_path / "second.onnx", "beta", "Sigmoid")
    open_and_wait(qtbot, window, first)
    first_nodes = named_nodes(window, "/")
    assert set(search(window, "/")) >= first_nodes and first_nodes
    old = kept_match()
    assert old is not None
    window.search_field.clear()  # nothing is searched after the next open: the old match would stay
    open_and_wait(qtbot, window, second)
    gc.collect()
    assert old() is None and graph_drawing._last_text_matches[2] is None
    found = search(window, "/")
    assert set(found) >= named_nodes(window, "/") and not set(found) & first_nodes
    assert search(window, "relu") == []  # the first model's op type: not in this one
    assert graph_drawing._last_text_matches[0]() is window.loaded.analysis


def test_the_search_text_kept_across_an_open_is_matched_in_the_new_model(qtbot, window, tmp_path):
    first = chain_model(tmp_path / "first.onnx", "alpha", "Relu")
    second = chain_model(tmp_path / "second.onnx", "beta", "Sigmoid", count=7)
    open_and_wait(qtbot, window, first)
    search(window, "step")
    old = kept_match()
    open_and_wait(qtbot, window, second)  # the field still says "step": searched in the new model
    gc.collect()
    assert old() is None
    assert found_nodes(window) == named_nodes(window, "step") and len(found_nodes(window)) == 7
    assert graph_drawing._last_text_matches[0]() is window.loaded.analysis


def test_the_same_file_rewritten_and_opened_again_is_searched_anew(qtbot, window, tmp_path):
    path = chain_model(tmp_path / "model.onnx", "alpha", "Relu")
    open_and_wait(qtbot, window, path)
    search(window, "step")
    assert len(found_nodes(window)) == 12
    chain_model(path, "alpha", "Relu", count=5)  # the same names, fewer of them
    open_and_wait(qtbot, window, path)
    assert len(window.loaded.analysis.order) == 5
    assert found_nodes(window) == named_nodes(window, "step") and len(found_nodes(window)) == 5
    assert search(window, "step9") == []  # only the first version had it


def test_closing_the_window_drops_the_kept_match(qtbot, window, tmp_path):
    open_and_wait(qtbot, window, chain_model(tmp_path / "first.onnx", "alpha", "Relu"))
    search(window, "/")
    old = kept_match()
    no_questions(window)
    window.close()
    gc.collect()
    assert old() is None and graph_drawing._last_text_matches[2] is None


def test_a_match_is_kept_for_its_own_model_only(tmp_path):
    """Without the window: the same text in another model (both alive) is matched in that model."""
    from gui.app import load_model
    first = load_model(str(chain_model(tmp_path / "first.onnx", "alpha", "Relu")))
    second = load_model(str(chain_model(tmp_path / "second.onnx", "beta", "Sigmoid", count=7)))
    kept = graph_drawing.text_matches(first.analysis, "step")
    assert graph_drawing.text_matches(first.analysis, "step") is kept  # the same model and text: reused
    assert len(kept.nodes) == 12 and all(n.startswith("alpha/") for n in kept.nodes)
    other = graph_drawing.text_matches(second.analysis, "step")
    assert len(other.nodes) == 7 and all(n.startswith("beta/") for n in other.nodes)
