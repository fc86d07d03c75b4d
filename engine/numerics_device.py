"""Numerics on a device: the device's own intermediate tensors against this computer's fp32 reference.

The model is uploaded to an agent (engine.bridge) and loaded under the chosen
backend and compute unit; for each input and each segment of layers, the
desktop computes the fp32 reference (ONNX Runtime, as engine.numerics_run
does) and asks the agent for the same tensors of one run on the device
(`intermediates`, docs/bridge-protocol.md).  The figures are the device's own
outputs compared with the reference: `measured`.
"""
from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np

from engine.numerics import MODE_DEVICE, NumericsError, NumericsResult, NumericsSettings, ProgressCallback
from engine.numerics_run import (_OrtSegments, _Stopped, _TensorAccumulator, _compare_sample, _finish, _prepare,
                                 _progress_reporter)
from engine.profile import MEASURED
from engine.targets import ProfileSettings


def run_device_numerics(model_path, address: str, settings: Optional[NumericsSettings] = None,
                        compute_unit: Optional[str] = None, backend: Optional[str] = None,
                        token: Optional[str] = None, progress: Optional[ProgressCallback] = None,
                        cancel: Optional[threading.Event] = None) -> NumericsResult:
    """Compare the device's intermediates with the fp32 reference, layer by layer.

    Raises TargetError (the agent cannot be reached, cannot load the model) and
    NumericsError; a failure after some layers keeps them (complete=False).
    """
    from engine.targets.bridge import BridgeTarget
    settings = settings or NumericsSettings(mode=MODE_DEVICE)
    prepared = _prepare(model_path, settings)
    proto, plan = prepared.proto, prepared.plan
    reference_runner = _OrtSegments(proto, plan.segments, settings.threads, False, prepared.weights)
    target = BridgeTarget(address, token=token, backend=backend, compute_unit=compute_unit)
    accumulators: dict[str, dict[str, _TensorAccumulator]] = {}
    error, seconds_reference, seconds_device, samples_done = "", 0.0, 0.0, 0
    report = _progress_reporter(plan, len(prepared.samples), progress)
    clock = time.perf_counter
    try:
        target.prepare(prepared.path, ProfileSettings(runs=1, warmup=0, seed=settings.seed,
                                                      input_shapes=prepared.input_shapes))
        description = target.describe()
        loaded = target._loaded or {}
        device = {"address": target.address, "device": description.get("device", ""),
                  "hardware_model": description.get("hardware_model", ""), "os": description.get("os", ""),
                  "chip": description.get("chip", ""), "backend": loaded.get("backend", backend or ""),
                  "compute_unit": loaded.get("compute_unit", compute_unit or "")}
        try:
            for sample_index, sample in enumerate(prepared.samples):
                def device_outputs(_segment, reference):
                    nonlocal seconds_device
                    wanted = {name: array.nbytes for name, array in reference.items()
                              if array.dtype in (np.float32, np.float64)}
                    tick = clock()
                    measured, _ = target.intermediates(list(wanted), sample, wanted) if wanted else ({}, {})
                    seconds_device += clock() - tick
                    return measured

                seconds_reference += _compare_sample(prepared, reference_runner, sample_index, sample,
                                                     device_outputs, accumulators, report, cancel)
                samples_done += 1
        except _Stopped as stop:
            error = str(stop)
        except KeyboardInterrupt:
            error = "interrupted"
        except Exception as exc:  # the device went away mid-run: keep what was compared
            if not accumulators:
                raise
            error = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
    finally:
        target.close()
    emulation = (f"device outputs: {device['backend']} backend, compute unit {device['compute_unit']}, on "
                 f"{device['device']} ({device['os']}, {device['chip']}), agent {device['address']}")
    return _finish(prepared, settings, accumulators, MEASURED, emulation, samples_done, error,
                   {"reference": round(seconds_reference, 4), "device": round(seconds_device, 4)}, device=device)


__all__ = ["run_device_numerics", "NumericsError"]
