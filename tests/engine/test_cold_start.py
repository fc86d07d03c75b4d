"""Cold start: a command imports only what it needs (issue 14).

`import onnx` costs a second here (it imports ml_dtypes; 0.7.0 takes 1.0-1.5 s), ONNX Runtime,
coremltools and Qt each cost more; `layerscope inspect` needs none of them.  These tests run
the real command in a fresh interpreter and look at what it loaded.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from importers.onnx import _small_values
from tests.conftest import light_model

# Loaded by `import onnx` (its __init__), the runtime, Core ML tools, the GUI stack.
NOT_FOR_INSPECT = ("onnx", "ml_dtypes", "onnxruntime", "coremltools", "PySide6", "pyqtgraph", "igraph")


def _loaded_after(code: str) -> set[str]:
    script = code + "\nimport sys\nprint('MODULES', ','.join(sorted(sys.modules)))\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    line = [l for l in result.stdout.splitlines() if l.startswith("MODULES ")][-1]
    return set(line[len("MODULES "):].split(","))


def test_inspect_command_loads_no_onnx_package_runtime_or_qt():
    model = light_model("resnet50")
    loaded = _loaded_after(f"from engine.cli import main\nassert main(['inspect', {str(model)!r}]) == 0")
    assert not {name for name in NOT_FOR_INSPECT if name in loaded}
    # what it does use from onnx: the message classes and the C++ shape inference, loaded alone
    assert {"onnx.onnx_ml_pb2", "onnx.onnx_cpp2py_export"} <= loaded


def test_onnx_imported_later_reuses_the_modules_the_reader_loaded():
    model = light_model("squeezenet")
    code = (
        "import sys\n"
        "from importers import open_model\n"
        f"graph = open_model({str(model)!r}).graphs[0]\n"
        "assert 'onnx' not in sys.modules\n"
        "import onnx, onnx.shape_inference, onnx.checker\n"
        "from importers import onnx_proto\n"
        "assert onnx.onnx_ml_pb2 is sys.modules['onnx.onnx_ml_pb2'] and onnx.ModelProto is onnx_proto.ModelProto\n"
        "assert onnx.onnx_cpp2py_export is sys.modules['onnx.onnx_cpp2py_export']\n"
        f"proto = onnx.load({str(model)!r})\n"
        "onnx.checker.check_model(proto)\n"
        "inferred = onnx.shape_inference.infer_shapes(proto)\n"
        "assert len(inferred.graph.value_info) > 0 and len(graph.nodes) == len(proto.graph.node)\n"
    )
    assert "ml_dtypes" in _loaded_after(code)  # the whole package, as before


CASES = [
    (TensorProto.FLOAT, np.float32, [1.5, -2.25, 3e-3]), (TensorProto.DOUBLE, np.float64, [1.5, -2.25]),
    (TensorProto.FLOAT16, np.float16, [1.5, -2.25, 65504.0]), (TensorProto.INT8, np.int8, [-128, 0, 127]),
    (TensorProto.UINT8, np.uint8, [0, 255]), (TensorProto.INT16, np.int16, [-32768, 7]),
    (TensorProto.UINT16, np.uint16, [65535, 1]), (TensorProto.INT32, np.int32, [-5, 2 ** 31 - 1]),
    (TensorProto.UINT32, np.uint32, [2 ** 32 - 1]), (TensorProto.INT64, np.int64, [-1, 2 ** 40, 3]),
    (TensorProto.UINT64, np.uint64, [2 ** 63]), (TensorProto.BOOL, np.bool_, [True, False, True]),
]


@pytest.mark.parametrize("raw", [True, False], ids=["raw_data", "typed_field"])
@pytest.mark.parametrize("data_type,dtype,values", CASES, ids=[helper.tensor_dtype_to_string(c[0]) for c in CASES])
def test_small_tensor_values_decoded_without_numpy_match_onnx(data_type, dtype, values, raw):
    array = np.array(values, dtype=dtype)
    if raw:
        tensor = numpy_helper.from_array(array, "t")
    else:
        tensor = helper.make_tensor("t", data_type, [len(values)], array.tolist(), raw=False)
    assert tensor.HasField("raw_data") == raw
    expected = numpy_helper.to_array(tensor).reshape(-1).tolist()
    assert list(_small_values(tensor)) == expected


def test_bfloat16_and_scalars_and_mismatched_data():
    tensor = helper.make_tensor("b", TensorProto.BFLOAT16, [2], [1.5, -3.0])
    assert _small_values(tensor) == (1.5, -3.0)
    scalar = numpy_helper.from_array(np.array(7, dtype=np.int64), "s")
    assert _small_values(scalar) == (7,)
    truncated = numpy_helper.from_array(np.arange(4, dtype=np.float32), "x")
    truncated.raw_data = truncated.raw_data[:-2]  # a malformed file: unknown, not garbage
    assert _small_values(truncated) is None
