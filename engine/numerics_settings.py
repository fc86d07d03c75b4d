"""The numerics command's modes and default tolerance, apart from engine.numerics (numpy, onnx):
every CLI command builds the whole parser, and `layerscope inspect` must not import those."""
from __future__ import annotations

MODE_STORAGE, MODE_COMPUTE = "fp16-storage", "fp16-compute"
MODES = (MODE_STORAGE, MODE_COMPUTE)
DEFAULT_TOLERANCE = 1e-2
