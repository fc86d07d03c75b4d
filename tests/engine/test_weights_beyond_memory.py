"""A model whose weights outside its file exceed the free memory is refused with a clear error before
anything is read (t20k.onnx: 45.6 GB of weights on a 24 GiB machine would have been read whole)."""
from __future__ import annotations

import sys
from typing import Optional

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.targets import ProfileSettings
from engine.free_memory import available_memory_bytes
from engine.targets.cpu import CpuTarget, check_external_data_fits
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
    if rows > 1024:
        _declare_stored_length(path, "w", rows * 8 * 4)
    return path


def _declare_stored_length(path, name: str, length: Optional[int]):
    """Set the `length` entry of the external tensor `name` (None: none, onnx then reads its file
    to the end); the file itself stays as it is.  Returns the model, its weights not read."""
    proto = onnx.load(str(path), load_external_data=False)
    weight = next(t for t in proto.graph.initializer if t.name == name)
    kept = [(e.key, e.value) for e in weight.external_data if e.key != "length"]
    del weight.external_data[:]
    for key, value in kept + ([("length", str(length))] if length is not None else []):
        weight.external_data.add(key=key, value=value)
    onnx.save(proto, str(path))
    return proto


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
    # Where to go instead: not a device agent, which takes single-file models of up to 2 GB only
    # (engine.bridge.backends.refuse_external_data), so none of those refused here.
    assert "ws://" not in message and "agent" not in message
    assert message.endswith("profile it on a computer with more memory (`layerscope profile` there), or free "
                            "memory first, or run it anyway (--ignore-memory-check)")


def test_weights_that_fit_are_profiled(tmp_path):
    path = _model_with_external_weight(tmp_path, 16)
    with CpuTarget() as target:
        profile = target.profile(ProfileSettings(runs=1, warmup=0), model_path=path)
    assert profile.end_to_end is not None and profile.end_to_end.median_ms > 0


def _external_int4_model(folder, elements: int, keep_length: bool = True):
    """A Dequantize of `elements` int4 weights kept in weights.bin: two to a byte in the file."""
    weight = helper.make_tensor("w", TensorProto.INT4, [16], bytes(8), raw=True)
    graph = helper.make_graph([helper.make_node("DequantizeLinear", ["w", "s"], ["y"], name="dq")], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [elements])],
                              [weight, numpy_helper.from_array(np.array(1.0, np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    path = folder / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    # Declared larger than it is: the check must not read the bytes.
    proto = _declare_stored_length(path, "w", elements // 2 if keep_length else None)
    weight = next(t for t in proto.graph.initializer if t.name == "w")
    del weight.dims[:]
    weight.dims.append(elements)
    onnx.save(proto, str(path))
    return path, proto


def test_weights_of_less_than_a_byte_count_as_stored_not_one_byte_each(tmp_path):
    """int4 weights (a quantized LLM's) take half a byte each in the file and in memory: 1.5x the free
    memory at a byte each, 0.75x as stored, so they fit and must not be refused."""
    elements = int(1.5 * available_memory_bytes()) // 2 * 2
    path, proto = _external_int4_model(tmp_path, elements)
    check_external_data_fits(proto, path)  # no refusal


def test_weights_without_a_length_count_the_rest_of_their_file(tmp_path):
    """Without a `length` entry onnx reads the weights' file to its end: that is what is counted."""
    path, proto = _external_int4_model(tmp_path, 16, keep_length=False)
    with open(tmp_path / "weights.bin", "r+b") as weights:  # sparse: takes no disk
        weights.truncate(2 * available_memory_bytes())
    with pytest.raises(TargetError, match="weights outside the model file take"):
        check_external_data_fits(proto, path)


def test_conversion_refuses_them_too_before_reading(tmp_path):
    """Conversion to Core ML reads every weight as well (engine.convert.source): the same refusal,
    a clear load error instead of a computer swapping 42 GiB."""
    from engine.convert.source import load_source
    from engine.ir import ModelLoadError

    path = _model_with_external_weight(tmp_path, int(2 * available_memory_bytes() / 32) + 1)
    with pytest.raises(ModelLoadError) as refused:
        load_source(path)
    message = str(refused.value)
    assert "its weights outside the model file take " in message and "GiB of memory free on this computer" in message
    assert message.endswith("converting reads them all into memory: convert it on a computer with more memory, "
                            "or free memory first, or convert it anyway (--ignore-memory-check)")
    # The sizes alone, for the app to offer its own way past (gui.convert_dialog: "Convert anyway").
    assert message == f"{path}: {refused.value.refusal}; converting reads them all into memory: convert it on a " \
                      "computer with more memory, or free memory first, or convert it anyway (--ignore-memory-check)"


def test_conversion_reads_weights_that_fit(tmp_path):
    from engine.convert.source import load_source

    source = load_source(_model_with_external_weight(tmp_path, 16))
    weight = next(t for t in source.proto.graph.initializer if t.name == "w")
    assert weight.data_location == TensorProto.DEFAULT and (numpy_helper.to_array(weight) == 1).all()
