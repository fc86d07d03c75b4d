"""A model whose weights outside its file exceed the free memory is refused with a clear error before
anything is read (t20k.onnx: 45.6 GB of weights on a 24 GiB machine would have been read whole)."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.targets import ProfileSettings
from engine.targets.cpu import CpuTarget, available_memory_bytes
from engine.targets.settings import TargetError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="free memory read from /proc/meminfo")


def _model_with_external_weight(folder, rows: int):
    """MatMul(x, w) with w (rows x 8, float32) stored in weights.bin beside the model."""
    weight = numpy_helper.from_array(np.ones((rows, 8), dtype=np.float32) if rows <= 1024 else np.ones((1, 8), np.float32),
                                     "w")
    if rows > 1024:  # declared larger than it is: the refusal must come before the bytes are read
        del weight.dims[:]
        weight.dims.extend([rows, 8])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    return path


def test_weights_larger_than_the_free_memory_are_refused_before_reading(tmp_path):
    available = available_memory_bytes()
    assert available is not None and available > 0
    rows = int(2 * available / 32) + 1  # twice the free memory, in float32 rows of 8
    path = _model_with_external_weight(tmp_path, rows)
    with CpuTarget() as target, pytest.raises(TargetError) as refused:
        target.profile(ProfileSettings(runs=1, warmup=0), model_path=path)
    message = str(refused.value)
    assert message.startswith("model.onnx: its weights outside the model file take ")
    assert "GiB of memory free on this computer" in message


def test_weights_that_fit_are_profiled(tmp_path):
    path = _model_with_external_weight(tmp_path, 16)
    with CpuTarget() as target:
        profile = target.profile(ProfileSettings(runs=1, warmup=0), model_path=path)
    assert profile.end_to_end is not None and profile.end_to_end.median_ms > 0
