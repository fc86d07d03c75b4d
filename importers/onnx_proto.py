"""The three parts of the `onnx` package the importer needs, without `import onnx`.

Opening a model needs the ModelProto message classes (`onnx.onnx_ml_pb2`), shape inference
and the operator schemas (both in the C++ extension `onnx.onnx_cpp2py_export`).  `import onnx`
loads far more: its `__init__` imports `onnx.helper` -> `onnx._mapping` -> `ml_dtypes`, and
ml_dtypes 0.7.0 alone takes 1.0-1.5 s to import on our machines (0.6.0: 0.15 s).  Every cold
start and every CLI command paid that.  Both modules load on their own from the installed onnx
package (about 40 ms), registered under their real names, so a later `import onnx` (samples,
conversion, tests) reuses them instead of loading the extension twice.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from types import ModuleType

_PROTO_MODULE = "onnx.onnx_ml_pb2"
_EXTENSION_MODULE = "onnx.onnx_cpp2py_export"


def _load_submodule(name: str, directory: str, file_prefix: str) -> ModuleType:
    """Execute one file of the onnx package under its dotted name, without the package's __init__."""
    if name in sys.modules:
        return sys.modules[name]
    matches = sorted(f for f in os.listdir(directory)
                     if f.startswith(file_prefix) and (f.endswith(".py") or f.endswith((".so", ".pyd"))))
    if not matches:
        raise ImportError(f"the installed onnx package has no {file_prefix} module in {directory}")
    spec = importlib.util.spec_from_file_location(name, os.path.join(directory, matches[0]))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class _AttachSubmodulesOnImport(importlib.abc.MetaPathFinder):
    """When `onnx` itself is imported later, make the submodules loaded here attributes of it.

    Python sets `package.sub` only when it loads `sub`; ours were loaded before the package, so
    without this `onnx.onnx_cpp2py_export` would be missing as an attribute (code that reaches it
    as `onnx.onnx_ml_pb2.X` would fail).  Removes itself after the first import of onnx.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "onnx":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("onnx")
        if spec is None or spec.loader is None:
            return spec
        original_exec = spec.loader.exec_module

        def exec_module(module):
            for name in (_PROTO_MODULE, _EXTENSION_MODULE):
                if name in sys.modules:
                    setattr(module, name.rpartition(".")[2], sys.modules[name])
            original_exec(module)

        spec.loader.exec_module = exec_module
        return spec


def _load() -> tuple[ModuleType, ModuleType]:
    if "onnx" in sys.modules and hasattr(sys.modules["onnx"], "ModelProto"):
        onnx = sys.modules["onnx"]
        return onnx.onnx_ml_pb2, onnx.onnx_cpp2py_export
    spec = importlib.util.find_spec("onnx")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the onnx package is not installed (pip install onnx)")
    directory = list(spec.submodule_search_locations)[0]
    if not any(isinstance(f, _AttachSubmodulesOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AttachSubmodulesOnImport())
    proto = _load_submodule(_PROTO_MODULE, directory, "onnx_ml_pb2")
    extension = _load_submodule(_EXTENSION_MODULE, directory, "onnx_cpp2py_export")
    return proto, extension


messages, _extension = _load()
ModelProto = messages.ModelProto
GraphProto = messages.GraphProto
NodeProto = messages.NodeProto
TensorProto = messages.TensorProto
TypeProto = messages.TypeProto
AttributeProto = messages.AttributeProto


def infer_shapes_bytes(model_bytes: bytes) -> bytes:
    """ONNX shape inference, serialized model in and out (what onnx.shape_inference.infer_shapes calls).

    check_type and strict_mode off: a model whose types disagree still opens, with the shapes that
    could be inferred; data propagation on: Reshape targets computed by Shape/Gather chains resolve.
    """
    return _extension.shape_inference.infer_shapes(model_bytes, False, False, True)


def has_schema(op_type: str, domain: str) -> bool:
    """True when ONNX defines this operator in this domain (any opset)."""
    return bool(_extension.defs.has_schema(op_type, domain))
