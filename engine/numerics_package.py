"""Numerics of a converted Core ML package (`layerscope convert --precision fp16`), before it ships.

The package's ML Program runs on LayerScope's MIL reference evaluator
(engine/convert/mil_reference.py: each op computes in fp32 and its result is
stored in the op's output dtype, so an fp16 program's tensors are rounded to
fp16 after every op); the source ONNX model named in the package's layer map
runs as the fp32 reference (ONNX Runtime); the layer map's tensor table ties
each ONNX tensor to its MIL value, so every converted layer is compared under
its source node's id.  The figures are `emulated` (no Core ML runs here).
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from engine.numerics import MODE_PACKAGE, NumericsError, NumericsResult, NumericsSettings, ProgressCallback
from engine.numerics_run import (EMULATED, _OrtSegments, _Stopped, _TensorAccumulator, _compare_sample, _finish,
                                 _prepare, _progress_reporter)


def layer_map_of(package_path: Path) -> tuple[dict, Path]:
    """The package's layer map (NAME.layermap.json beside NAME.mlpackage) and its source ONNX model."""
    map_path = package_path.with_name(package_path.stem + ".layermap.json")
    try:
        layer_map = json.loads(map_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NumericsError(f"{package_path.name} has no layer map beside it ({map_path.name}); numerics compares "
                            "packages written by layerscope convert, which writes one") from None
    except (OSError, ValueError) as exc:
        raise NumericsError(f"{map_path}: not a readable layer map ({exc})") from None
    source = Path(layer_map.get("source_model", ""))
    if not source.is_file():
        raise NumericsError(f"the source model named in {map_path.name} ({source}) is not there: numerics needs "
                            "it as the fp32 reference")
    return layer_map, source


def run_package_numerics(package_path, settings: Optional[NumericsSettings] = None,
                         progress: Optional[ProgressCallback] = None,
                         cancel: Optional[threading.Event] = None) -> NumericsResult:
    """Compare every converted layer of the package (on the MIL reference evaluator) with the fp32 source."""
    from engine.convert.mil_reference import EvaluationError, UnsupportedOp, evaluate, load_program
    settings = settings or NumericsSettings(mode=MODE_PACKAGE)
    package_path = Path(package_path)
    layer_map, source = layer_map_of(package_path)
    if layer_map.get("options", {}).get("image_inputs"):
        raise NumericsError(f"{package_path.name} has image inputs: numerics compares packages with tensor "
                            "inputs only")
    prepared = _prepare(source, settings)
    proto, plan = prepared.proto, prepared.plan
    program = load_program(package_path)
    reference_runner = _OrtSegments(proto, plan.segments, settings.threads, False, prepared.weights)
    tensors = dict(layer_map.get("tensors") or {})  # ONNX tensor -> MIL value
    if not tensors:
        raise NumericsError(f"the layer map of {package_path.name} has no tensor table (the converter writes it "
                            "when it checks values, with --optimize exact): convert again with those defaults")
    inputs = dict(layer_map.get("inputs", {}))
    accumulators: dict[str, dict[str, _TensorAccumulator]] = {}
    error, seconds_reference, seconds_package, samples_done = "", 0.0, 0.0, 0
    report = _progress_reporter(plan, len(prepared.samples), progress)
    clock = time.perf_counter
    try:
        for sample_index, sample in enumerate(prepared.samples):
            if cancel is not None and cancel.is_set():
                raise _Stopped("cancelled")
            tick = clock()
            try:
                values = evaluate(program, {inputs.get(name, name): np.asarray(value, np.float32)
                                            if value.dtype == np.float64 else value for name, value in sample.items()},
                                  keep=set(tensors.values()))
            except (UnsupportedOp, EvaluationError) as exc:
                node = layer_map.get("mil_ops", {}).get(exc.op_name, {}).get("source") or "(no source node)"
                raise NumericsError(f"the MIL reference evaluator stops at {node}: {exc}") from None
            seconds_package += clock() - tick
            converted = {name: values[mil] for name, mil in tensors.items() if mil in values}
            seconds_reference += _compare_sample(prepared, reference_runner, sample_index, sample,
                                                 lambda _segment, _reference: converted, accumulators, report,
                                                 cancel)
            samples_done += 1
    except _Stopped as stop:
        error = str(stop)
    except KeyboardInterrupt:
        error = "interrupted"
    except NumericsError as exc:
        if not accumulators:
            raise
        error = str(exc)
    for node_id in plan.node_ids:
        if node_id not in accumulators and node_id in prepared.not_compared \
                and node_id not in layer_map.get("nodes", {}):
            prepared.not_compared[node_id] = "not in the package (folded, removed or fused by the converter)"
    options = layer_map.get("options", {})
    emulation = (f"package: {package_path.name} ({options.get('precision', '?')}, {options.get('target', '?')}) "
                 "run by LayerScope's MIL reference evaluator: each op computes in fp32 and its result is stored "
                 "in the op's output dtype (fp16 in an fp16 package); not Core ML itself")
    return _finish(prepared, settings, accumulators, EMULATED, emulation, samples_done, error,
                   {"reference": round(seconds_reference, 4), "package": round(seconds_package, 4)},
                   device={"package": str(package_path), "source_model": str(source)})
