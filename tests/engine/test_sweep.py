"""Sweeps over input size and alpha, on real ONNX Runtime sessions."""
from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import light_model
from engine.sweep import parse_size, sample_parameters, sweep_alpha, sweep_sizes
from engine.targets import ProfileSettings, TargetError

FAST = ProfileSettings(runs=2, warmup=1)


def test_parse_size():
    assert parse_size("224") == (224, 224)
    assert parse_size("256x192") == (256, 192)
    assert parse_size((64, 32)) == (64, 32)
    with pytest.raises(TargetError):
        parse_size("big")


def test_size_sweep_of_the_sample_regenerates_it(sample_model):
    assert sample_parameters(sample_model)["alpha"] == 0.5
    kept = []
    rows = sweep_sizes(sample_model, ["64x64", "96x128"], FAST, keep_profiles=kept)
    assert [r["setting"] for r in rows] == ["64x64", "96x128"]
    assert rows[0]["size"] == [64, 64]
    for row in rows:
        assert row["median_ms"] > 0 and row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert row["complete"] and row["kind"] == "measured"
    assert rows[1]["macs"] == pytest.approx(rows[0]["macs"] * 3, rel=0.01)  # MACs scale with H*W
    assert kept[1][0].settings["input_shapes"] == {"image": [1, 3, 96, 128]}
    with pytest.raises(TargetError, match="multiple of 32"):
        sweep_sizes(sample_model, ["100x100"], FAST)


def test_alpha_sweep(sample_model):
    rows = sweep_alpha(sample_model, [0.25, 0.5], FAST, size="64")
    assert [r["alpha"] for r in rows] == [0.25, 0.5]
    assert rows[0]["macs"] < rows[1]["macs"] and rows[0]["params"] < rows[1]["params"]


def test_size_sweep_of_free_dims_and_fixed_model(tmp_path):
    weight = onnx.numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[weight])
    path = tmp_path / "free.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    rows = sweep_sizes(path, ["16x16", "32x32"], FAST)
    assert [r["macs"] for r in rows] == [2 * 3 * 256, 2 * 3 * 1024]
    with pytest.raises(TargetError, match="alpha"):
        sweep_alpha(path, [0.5], FAST)
    with pytest.raises(TargetError, match="data_0"):
        sweep_sizes(light_model("squeezenet"), ["160x160"], FAST)


def test_sweep_cancel_keeps_finished_rows(sample_model):
    cancel = threading.Event()

    def progress(done, total, message):
        if message.startswith("64x64") and "run 2/" in message:
            cancel.set()

    rows = sweep_sizes(sample_model, ["64x64", "96x96", "128x128"], FAST, progress=progress, cancel=cancel)
    assert len(rows) == 1 and rows[0]["complete"]
