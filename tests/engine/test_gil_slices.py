"""Bulk work over a big model's lists a slice at a time (engine.gil_slices): the same results as one
C call per list, and a thread doing it hands the GIL over between slices."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import engine.gil_slices as gil_slices
from benchmarks.bench_gui_open import residual_model
from engine.analysis import analyze
from engine.group_index import node_arrays
from importers import open_model
from importers.onnx import ModelBuilder
from importers.onnx_proto import ModelProto
from tests.engine.gil_holds import longest_hold_ms

UNSLICED = 10 ** 9  # SLICE_ITEMS that makes every list one slice: the one-call behaviour


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    return residual_model(tmp_path_factory.mktemp("sliced") / "residual6k.onnx", 6000)


@pytest.mark.parametrize("count", [0, 1, 6, 7, 8, 20])
def test_the_sliced_helpers_give_what_one_call_gives(monkeypatch, count):
    monkeypatch.setattr(gil_slices, "SLICE_ITEMS", 7)
    ids = {f"v{i}": i * 3 for i in range(0, count, 2)}
    names = [f"v{i}" for i in range(count)]
    assert gil_slices.array_of(ids.get, names, np.int64, -1).tolist() == [ids.get(n, -1) for n in names]
    rows = [(i, None if i % 3 else 2.5, -i) for i in range(count)]
    table = gil_slices.table_of(rows, float, 3)
    assert table.shape == (count, 3)
    assert np.array_equal(table, np.array(rows, float).reshape(-1, 3), equal_nan=True)
    keys = [f"k{i % 5}" for i in range(count)]  # repeated keys: the last value wins, as in one update
    mapping = {"k0": -1, "other": -2}
    gil_slices.update(mapping, keys, range(count))
    assert mapping == {"k0": -1, "other": -2, **dict(zip(keys, range(count)))} and list(mapping)[:2] == ["k0", "other"]
    shared = object()
    items = [shared] * count + [[i] for i in range(count)]
    gil_slices.clear(items)
    assert items == [] and sys.getrefcount(shared) == 2  # every reference dropped
    assert gil_slices.slice_bounds(count) == [(s, min(s + 7, count)) for s in range(0, count, 7)]


def _imported_and_analysed(path):
    model = open_model(path)
    analysis = analyze(model)
    arrays = node_arrays(analysis).tensors()
    return model, analysis, arrays, node_arrays(analysis).figures(analysis)


def test_a_model_imported_and_analysed_in_small_slices_is_the_one_of_one_slice(monkeypatch, residual):
    monkeypatch.setattr(gil_slices, "SLICE_ITEMS", UNSLICED)
    model, analysis, arrays, figures = _imported_and_analysed(residual)
    monkeypatch.setattr(gil_slices, "SLICE_ITEMS", 97)  # many slices, the last one short
    model_sliced, analysis_sliced, arrays_sliced, figures_sliced = _imported_and_analysed(residual)
    assert len(model.main_graph.nodes) >= 6000
    assert repr(model_sliced) == repr(model)  # every node, value, attribute and warning
    assert analysis_sliced.order == analysis.order and analysis_sliced.nodes == analysis.nodes
    assert analysis_sliced.totals == analysis.totals and analysis_sliced.stages == analysis.stages
    for a, b in zip(arrays_sliced._reads, arrays._reads):
        assert np.array_equal(a, b)
    assert figures_sliced.keys() == figures.keys()
    for key in figures:
        assert np.array_equal(figures_sliced[key], figures[key])


def test_reading_the_nodes_of_a_big_graph_hands_the_gil_over_between_slices(monkeypatch, tmp_path):
    # 60,000 nodes: one C call reading a column of them holds the GIL ~25-40 ms; a slice ~1 ms.
    path = residual_model(tmp_path / "residual60k.onnx", 60_000)
    proto = ModelProto.FromString(path.read_bytes())

    walked = []

    def walk() -> None:
        walked.append(ModelBuilder(proto, path, {}, {})._walk_nodes(proto.graph))  # freed after: not timed

    sliced = 512  # not SLICE_ITEMS: what is tested is that a slice bounds the hold
    longest = {}
    for size in (UNSLICED, sliced) * 3:  # interleaved; the least of 3 (load only adds)
        monkeypatch.setattr(gil_slices, "SLICE_ITEMS", size)
        longest[size] = min(longest.get(size, float("inf")), longest_hold_ms(walk))
        walked.clear()
    print(f"\nlongest GIL hold while 60,000 nodes are read: {longest[UNSLICED]:.1f} ms of CPU in one slice, "
          f"{longest[sliced]:.1f} ms in slices of {sliced}")
    # Measured here (load 5-7): 3-5 ms against 33-44 ms (a wide margin: timings on a shared machine).
    assert longest[sliced] < 0.5 * longest[UNSLICED]


def test_building_an_array_in_slices_hands_the_gil_over(monkeypatch):
    # A loop of np.fromiter calls kept the GIL from a waiting thread for the whole loop (160-290 ms
    # measured over 265,000 items) until each slice ended with gil_slices.hand_over().
    names = [f"value {i}" for i in range(265_000)]
    ids = {name: i for i, name in enumerate(names[::2])}
    built = []

    def build() -> None:
        built.append(gil_slices.array_of(ids.get, names, np.int64, -1))

    longest = {}
    for size in (UNSLICED, 512) * 3:  # interleaved; the least of 3
        monkeypatch.setattr(gil_slices, "SLICE_ITEMS", size)
        longest[size] = min(longest.get(size, float("inf")), longest_hold_ms(build))
    assert all(np.array_equal(array, built[0]) for array in built)
    print(f"\nlongest GIL hold while an array of 265,000 lookups is built: {longest[UNSLICED]:.1f} ms of CPU "
          f"in one slice, {longest[512]:.1f} ms in slices of 512")
    # Measured here (load ~1): 1.4 ms against 65-75 ms; without hand_over() both were the whole loop.
    assert longest[512] < 0.25 * longest[UNSLICED]  # without hand_over(): 0.4 of it (29 ms against 70)


def test_a_dict_updated_in_slices_hands_the_gil_over(monkeypatch):
    # GraphIndex's name -> id dict, the analysis' metrics by node id, the group index's tensor numbers:
    # one update over big.onnx's 100,000 names held the GIL 20-33 ms.
    names = [f"/block{i // 50}/node{i}/output_0" for i in range(300_000)]
    built = []

    def build() -> None:
        mapping = {"": 0}
        gil_slices.update(mapping, names, range(1, len(names) + 1))
        built.append(mapping)

    longest = {}
    for size in (UNSLICED, 512) * 3:  # interleaved; the least of 3
        monkeypatch.setattr(gil_slices, "SLICE_ITEMS", size)
        longest[size] = min(longest.get(size, float("inf")), longest_hold_ms(build))
    assert all(mapping == built[0] for mapping in built) and len(built[0]) == len(names) + 1
    print(f"\nlongest GIL hold while a dict of 300,000 names is built: {longest[UNSLICED]:.1f} ms of CPU "
          f"in one slice, {longest[512]:.1f} ms in slices of 512")
    assert longest[512] < 0.25 * longest[UNSLICED]
