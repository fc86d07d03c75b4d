"""`intermediates`: chosen intermediate tensors of the loaded model, computed on the agent's device.

The agent's side of the message (docs/bridge-protocol.md, "Intermediates").  The
desktop compares them with its own fp32 reference (engine.numerics_device);
they are the device's own outputs, so their figures are `measured`.

The ONNX Runtime backend adds every node output of the loaded session copy as a
graph output (optimizations off, so every node's tensor exists), on the
session's execution providers, and returns the names asked for.  The Core ML
backend's form is designed in the protocol document; this agent does not
implement it and says so.
"""
from __future__ import annotations

import base64
import io
import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from engine.bridge.protocol import ProtocolError
from engine.profile import MEASURED, TimingStats
from engine.targets import TargetError
from engine.targets.prepared import merged_feed

MAX_TENSORS = 4096  # names per request


def intermediates_job(session, message: Mapping, reply_limit: int) -> Callable:
    """Check an `intermediates` request against the loaded session; the job's work function.

    Raises ProtocolError at once for a malformed request or a backend without intermediates.
    """
    names = message["tensors"]
    if not names or not all(isinstance(n, str) and n for n in names) or len(names) > MAX_TENSORS:
        raise ProtocolError("bad_message", f"tensors must list 1 to {MAX_TENSORS} tensor names")
    if len(set(names)) != len(names):
        raise ProtocolError("bad_message", "tensors lists a name twice")
    feed = None
    if message.get("inputs_npz_b64"):
        try:
            with np.load(io.BytesIO(base64.b64decode(message["inputs_npz_b64"], validate=True)),
                         allow_pickle=False) as data:
                feed = {key: data[key] for key in data.files}
        except Exception as exc:
            raise ProtocolError("bad_message", f"inputs_npz_b64 is not a base64 .npz: {exc}") from None
    capture = _capture_for(session)

    def work(job) -> dict:
        start = time.perf_counter()
        arrays = capture(names, feed)
        elapsed = (time.perf_counter() - start) * 1000.0
        keys = {name: f"t{index}" for index, name in enumerate(names)}
        buffer = io.BytesIO()
        np.savez(buffer, **{keys[name]: np.asarray(arrays[name]) for name in names})
        size = buffer.tell() * 4 // 3
        if size > reply_limit:
            return {"type": "error", "id": job.request_id, "code": "message_too_large",
                    "message": f"the {len(names)} tensors asked for take {size} bytes encoded, more than the "
                               f"{reply_limit} bytes a reply may carry: ask for fewer at a time",
                    "max_message_bytes": reply_limit * 2}
        return {"type": "intermediates_result", "id": job.request_id, "kind": MEASURED,
                "backend": getattr(session.backend, "name", ""), "compute_unit": session.compute_unit,
                "tensors": [{"name": name, "key": keys[name], "shape": list(np.shape(arrays[name])),
                             "dtype": str(np.asarray(arrays[name]).dtype)} for name in names],
                "npz_b64": base64.b64encode(buffer.getvalue()).decode("ascii"),
                "run_ms": TimingStats.from_samples([elapsed]).to_json_dict()}

    return work


def _capture_for(session) -> Callable[[Sequence[str], Optional[Mapping[str, np.ndarray]]], dict]:
    from engine.bridge.backends import OrtSession
    if isinstance(session, OrtSession):
        return lambda names, feed: ort_intermediates(session, names, feed)
    raise ProtocolError("backend_unavailable",
                        f"this agent's {getattr(session.backend, 'name', 'current')} backend does not return "
                        "intermediate tensors (the message is designed for Core ML in docs/bridge-protocol.md, "
                        "and implemented here for onnxruntime only): load the ONNX model with the onnxruntime "
                        "backend")


def ort_intermediates(session, names: Sequence[str], feed: Optional[Mapping[str, np.ndarray]]) -> dict:
    """The named tensors of one run of the loaded model on the session's execution providers."""
    capture = getattr(session, "_intermediates_session", None)
    if capture is None:
        capture = session._intermediates_session = _all_outputs_session(session)
    ort_session, available = capture
    unknown = [name for name in names if name not in available]
    if unknown:
        raise TargetError(f"the model has no tensor {', '.join(repr(n) for n in unknown[:3])}"
                          + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
                          + " (ask for node outputs by their names in the ONNX file)")
    inputs = merged_feed(session.target.inputs, feed)
    try:
        values = ort_session.run(list(names), inputs)
    except Exception as exc:
        from engine.targets.cpu import _short_ort_message
        raise TargetError(f"the run failed: {_short_ort_message(exc)}") from None
    return dict(zip(names, values))


def _all_outputs_session(session):
    import onnx
    import onnxruntime as ort
    from onnx import helper
    proto = onnx.load(str(session.target.session_model_path))
    outputs = {o.name for o in proto.graph.output}
    available = set(outputs)
    for node in proto.graph.node:
        for name in node.output:
            if name and name not in available:
                proto.graph.output.append(helper.make_empty_tensor_value_info(name))
                available.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    # Every node's own output: no fusion may remove one.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    try:
        created = ort.InferenceSession(proto.SerializeToString(), options, providers=list(session.target.providers))
    except Exception as exc:
        from engine.targets.cpu import _short_ort_message
        raise TargetError(f"ONNX Runtime cannot expose the intermediates: {_short_ort_message(exc)}") from None
    return created, available
