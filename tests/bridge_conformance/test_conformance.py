"""What every layerscope-bridge/1 agent must do (docs/bridge-protocol.md, section numbers in the names)."""
from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.bridge_conformance.bridge_wire import PROTOCOL, Wire, tiny_onnx_bytes

KINDS = ("measured", "derived", "attributed", "planned", "emulated", "estimated")  # docs/bridge-protocol.md §8
ERROR_CODES = {"bad_message", "unknown_type", "hello_required", "unauthorized", "unsupported_version",
               "message_too_large", "model_too_large", "unknown_upload", "bad_offset", "checksum_mismatch",
               "upload_in_progress", "unsafe_archive", "bad_archive", "unknown_model", "backend_unavailable",
               "bad_settings", "load_failed", "not_loaded", "profile_failed", "no_job", "internal"}
LONG_RUNS = 1_000_000  # a profile that only a cancel ends


# ---------------------------------------------------------------------------- helpers

def chunk(upload_id: str, offset: int, payload: bytes) -> bytes:
    return b"LSU1" + bytes.fromhex(upload_id) + struct.pack(">Q", offset) + payload


def upload(wire: Wire, data: bytes, name: str, fmt: str, timeout: float = 30.0) -> dict:
    """Upload bytes following section 5; returns the final message (upload_done or error)."""
    sha = hashlib.sha256(data).hexdigest()
    request_id = wire.send({"type": "upload_begin", "sha256": sha, "size": len(data), "name": name,
                            "format": fmt})
    reply = wire.recv_for(request_id, ("upload_ready", "upload_done"), timeout)
    if reply["type"] != "upload_ready":
        return reply
    size = reply["chunk_bytes"]
    for offset in range(reply["offset"], len(data), size):
        wire.send_raw(chunk(reply["upload"], offset, data[offset:offset + size]))
    return wire.recv_for(request_id, ("upload_done",), timeout)


def tiny_mlpackage_zip() -> bytes:
    """For agents without onnxruntime (the iOS app): a one-layer ML program, zipped (needs coremltools)."""
    ct = pytest.importorskip("coremltools")
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 32, 32))])
    def program(x):
        return mb.relu(x=mb.add(x=x, y=np.float32(1.0)), name="y")

    model = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16)
    with tempfile.TemporaryDirectory() as folder:
        package = Path(folder) / "tiny.mlpackage"
        model.save(str(package))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for path in sorted(package.rglob("*")):
                if path.is_file():
                    zf.write(path, f"tiny.mlpackage/{path.relative_to(package).as_posix()}")
        return buffer.getvalue()


@pytest.fixture(scope="module")
def runnable(agent):
    """(backend, upload bytes, name, format, node ids expected) for a backend the agent has available."""
    connection = Wire(agent.address)
    try:
        connection.hello(agent.token)
        description = connection.request({"type": "describe"}, ("description",))
    finally:
        connection.close()
    available = {b["name"] for b in description["backends"] if b["available"]}
    if "onnxruntime" in available:
        return "onnxruntime", tiny_onnx_bytes(), "tiny.onnx", "onnx", {"conv1", "relu1", "conv2", "add", "relu2"}
    if "coreml" in available:
        return "coreml", tiny_mlpackage_zip(), "tiny.mlpackage.zip", "mlpackage-zip", None
    pytest.skip(f"the agent has no backend this suite can feed: {sorted(available)}")


def load(wire: Wire, runnable, settings=None) -> dict:
    backend, data, name, fmt, _ = runnable
    done = upload(wire, data, name, fmt)
    assert done["type"] == "upload_done", done
    return wire.request({"type": "load", "model": done["sha256"], "backend": backend,
                         "settings": settings or {}}, ("loaded",), timeout=120)


def kinds_missing(value, path="$"):
    problems = []
    if isinstance(value, dict):
        if "median_ms" in value and value.get("kind") not in KINDS:
            problems.append(path)
        for key, item in value.items():
            problems += kinds_missing(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems += kinds_missing(item, f"{path}[{index}]")
    return problems


def assert_error(message: dict, code: str) -> None:
    assert message["type"] == "error", message
    assert message["code"] == code, message
    assert message["code"] in ERROR_CODES
    assert isinstance(message["message"], str) and message["message"]


def assert_serving(wire: Wire) -> None:
    assert wire.request({"type": "ping"}, ("pong",))["type"] == "pong"


def assert_closed(wire: Wire, code: int, timeout: float = 5.0) -> None:
    from websockets.exceptions import ConnectionClosed
    deadline = time.monotonic() + timeout
    with pytest.raises(ConnectionClosed) as caught:
        while time.monotonic() < deadline:
            wire.websocket.recv(timeout=max(0.01, deadline - time.monotonic()))
    assert caught.value.rcvd is not None and caught.value.rcvd.code == code


# ---------------------------------------------------------------------------- 3. handshake

def test_3_hello_gets_welcome_with_version_limits_capabilities(wire):
    welcome = wire.welcome
    assert welcome["protocol"] == PROTOCOL
    assert {"name", "version"} <= set(welcome["agent"])
    for key in ("max_message_bytes", "max_model_bytes", "chunk_bytes"):
        assert isinstance(welcome["limits"][key], int) and welcome["limits"][key] > 0
    assert welcome["limits"]["max_message_bytes"] >= welcome["limits"]["chunk_bytes"] + 28
    assert isinstance(welcome.get("capabilities", []), list)


def test_3_requests_before_hello_are_refused(agent):
    connection = Wire(agent.address)
    try:
        assert_error(connection.request({"type": "describe"}, ("description",)), "hello_required")
        assert connection.hello(agent.token)["type"] == "welcome"  # the connection stays usable
    finally:
        connection.close()


def test_3_unsupported_version_is_refused_and_closed(agent):
    connection = Wire(agent.address)
    try:
        reply = connection.hello(agent.token, protocols=("layerscope-bridge/99",))
        assert_error(reply, "unsupported_version")
        assert_closed(connection, 4426)
    finally:
        connection.close()


def test_3_wrong_token_is_refused_and_closed(agent):
    if agent.token is None:
        pytest.skip("the agent's token is not known (give --agent-token)")
    connection = Wire(agent.address)
    try:
        assert_error(connection.hello(agent.token + "x"), "unauthorized")
        assert_closed(connection, 4401)
    finally:
        connection.close()
    connection = Wire(agent.address)
    try:
        assert_error(connection.hello(None), "unauthorized")
    finally:
        connection.close()


# ---------------------------------------------------------------------------- 2. validation

def test_2_malformed_and_unknown_messages_get_errors_and_the_connection_goes_on(wire):
    wire.send_raw("{this is not json")
    assert_error(wire.recv(), "bad_message")
    wire.send_raw("[1, 2, 3]")
    assert_error(wire.recv(), "bad_message")
    assert_error(wire.request({"type": "frobnicate"}, ()), "unknown_type")
    assert_error(wire.request({"type": "upload_begin"}, ()), "bad_message")          # fields missing
    assert_error(wire.request({"type": "upload_begin", "sha256": "0" * 64, "size": "12"}, ()), "bad_message")
    wire.send_raw(b"not a chunk")
    assert_error(wire.recv(), "bad_message")
    assert_serving(wire)


def test_12_oversized_message_gets_an_error_and_the_connection_goes_on(wire, connect):
    limit = wire.welcome["limits"]["max_message_bytes"]
    request_id = wire.send({"type": "ping", "padding": "x" * (limit + 1)})
    reply = wire.recv()
    assert_error(reply, "message_too_large")
    assert reply["id"] in (request_id, None)
    assert_serving(wire)
    assert_serving(connect())


def test_9_ping_pong(wire):
    reply = wire.request({"type": "ping"}, ("pong",))
    assert reply["type"] == "pong"


# ---------------------------------------------------------------------------- 6. describe

def test_6_describe_names_device_and_backends(wire):
    description = wire.request({"type": "describe"}, ("description",))
    device = description["device"]
    for key in ("name", "hardware_model", "os", "os_version", "chip", "memory_bytes"):
        assert key in device, key
    assert description["backends"], "an agent has at least one backend"
    for backend in description["backends"]:
        assert isinstance(backend["name"], str) and isinstance(backend["available"], bool)
        if backend["available"]:
            assert backend["compute_units"] and all("name" in u for u in backend["compute_units"])
        else:
            assert backend.get("reason"), f"{backend['name']} is unavailable without a reason"


# ---------------------------------------------------------------------------- 5. upload

def test_5_upload_then_cache_hit_by_sha256(wire):
    data = os.urandom(300_000)
    first = upload(wire, data, "blob.bin", "file")
    assert first["type"] == "upload_done" and first["cached"] is False
    assert first["sha256"] == hashlib.sha256(data).hexdigest()
    second = upload(wire, data, "blob.bin", "file")
    assert second["type"] == "upload_done" and second["cached"] is True


def test_5_checksum_mismatch_discards_the_upload(wire):
    data = os.urandom(10_000)
    wrong = hashlib.sha256(b"something else").hexdigest()
    request_id = wire.send({"type": "upload_begin", "sha256": wrong, "size": len(data), "format": "file"})
    ready = wire.recv_for(request_id, ("upload_ready",))
    wire.send_raw(chunk(ready["upload"], 0, data))
    assert_error(wire.recv_for(request_id, ("upload_done",)), "checksum_mismatch")
    assert_serving(wire)


def test_5_chunk_at_a_wrong_offset_says_where_to_continue(wire):
    data = os.urandom(5_000)
    request_id = wire.send({"type": "upload_begin", "sha256": hashlib.sha256(data).hexdigest(),
                            "size": len(data), "format": "file"})
    ready = wire.recv_for(request_id, ("upload_ready",))
    wire.send_raw(chunk(ready["upload"], ready["offset"] + 7, data[7:]))
    reply = wire.recv_for(request_id, ("upload_done",))
    assert_error(reply, "bad_offset")
    assert reply["expected"] == ready["offset"]
    wire.send_raw(chunk(ready["upload"], ready["offset"], data[ready["offset"]:]))
    assert wire.recv_for(request_id, ("upload_done",))["type"] == "upload_done"


def test_5_chunk_for_an_upload_never_begun_is_refused(wire):
    wire.send_raw(chunk("ab" * 16, 0, b"data"))
    assert_error(wire.recv(), "unknown_upload")


def test_5_upload_resumes_after_the_connection_drops(agent, connect):
    first = connect()
    chunk_bytes = first.welcome["limits"]["chunk_bytes"]
    data = os.urandom(2 * chunk_bytes + 1234)
    sha = hashlib.sha256(data).hexdigest()
    request_id = first.send({"type": "upload_begin", "sha256": sha, "size": len(data), "format": "file"})
    ready = first.recv_for(request_id, ("upload_ready",))
    assert ready["offset"] == 0
    first.send_raw(chunk(ready["upload"], 0, data[:chunk_bytes]))
    assert_serving(first)  # the chunk has been processed before the ping's answer
    first.close()
    second = connect()
    deadline = time.monotonic() + 5
    while True:  # the agent notices the closed connection asynchronously
        request_id = second.send({"type": "upload_begin", "sha256": sha, "size": len(data), "format": "file"})
        ready = second.recv_for(request_id, ("upload_ready",))
        if ready["type"] != "error" or ready["code"] != "upload_in_progress" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ready["type"] == "upload_ready", ready
    assert ready["offset"] == chunk_bytes
    for offset in range(chunk_bytes, len(data), chunk_bytes):
        second.send_raw(chunk(ready["upload"], offset, data[offset:offset + chunk_bytes]))
    done = second.recv_for(request_id, ("upload_done",))
    assert done["type"] == "upload_done" and done["sha256"] == sha


def test_12_model_above_the_limit_is_refused(wire):
    limit = wire.welcome["limits"]["max_model_bytes"]
    reply = wire.request({"type": "upload_begin", "sha256": "ab" * 32, "size": limit + 1, "format": "onnx"},
                         ("upload_ready", "upload_done"))
    assert_error(reply, "model_too_large")


@pytest.mark.parametrize("entry", ["../escape.txt", "/tmp/absolute.txt", "pkg/../../escape.txt"])
def test_5_archive_with_a_path_leaving_its_folder_is_refused(wire, entry):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pkg.mlpackage/Manifest.json", "{}")
        zf.writestr(entry, "owned")
    assert_error(upload(wire, buffer.getvalue(), "evil.mlpackage.zip", "mlpackage-zip"), "unsafe_archive")


def test_5_archive_with_a_symlink_is_refused(wire):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pkg.mlpackage/Manifest.json", "{}")
        link = zipfile.ZipInfo("pkg.mlpackage/Data/weights")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    assert_error(upload(wire, buffer.getvalue(), "link.mlpackage.zip", "mlpackage-zip"), "unsafe_archive")


def test_5_a_package_archive_carries_its_layer_map_beside_the_package_folder(wire):
    layer_map = '{"schema": "layerscope.layermap/1", "nodes": {}, "folded": [], "removed": []}'
    for with_map in (True, False):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("pkg.mlpackage/Manifest.json", "{}")
            if with_map:
                zf.writestr("pkg.layermap.json", layer_map)
        done = upload(wire, buffer.getvalue(), "pkg.mlpackage.zip", "mlpackage-zip")
        assert done["type"] == "upload_done" and done["format"] == "mlpackage", done
        assert done.get("layer_map") is with_map, done


# ---------------------------------------------------------------------------- 4, 9. load and profile

def test_9_load_of_an_unknown_model_is_refused(wire):
    assert_error(wire.request({"type": "load", "model": "cd" * 32}, ("loaded",)), "unknown_model")


def test_9_profile_before_load_is_refused(wire):
    assert_error(wire.request({"type": "profile", "settings": {"runs": 2}}, ("result",)), "not_loaded")


def test_9_load_reports_a_measured_load_time(wire, runnable):
    loaded = load(wire, runnable)
    assert loaded["type"] == "loaded", loaded
    assert loaded["load_ms"]["kind"] == "measured" and loaded["load_ms"]["median_ms"] > 0
    assert loaded["inputs"] and all("name" in i for i in loaded["inputs"])


def test_9_profile_streams_progress_partials_and_a_result_with_kinds(wire, runnable):
    assert load(wire, runnable)["type"] == "loaded"
    runs = 8
    request_id = wire.send({"type": "profile", "settings": {"runs": runs, "warmup": 1}, "granularity": "layer",
                            "partial_every": 2})
    seen = []
    while True:
        message = wire.recv_for(request_id, (), timeout=60)
        seen.append(message)
        assert message["type"] not in ("error", "busy"), message
        if message["type"] == "result":
            break
    types = [m["type"] for m in seen]
    assert types[0] == "accepted"
    assert "progress" in types
    partials = [m for m in seen if m["type"] == "partial"]
    assert partials, "partial results are streamed"
    assert all(m["profile"]["complete"] is False and m["profile"]["runs"] == m["runs"] for m in partials)
    assert [m["runs"] for m in partials] == sorted(m["runs"] for m in partials)
    for message in seen:
        assert not kinds_missing(message), f"figures without a kind in {message['type']}: {kinds_missing(message)}"
    profile = seen[-1]["profile"]
    assert profile["schema"] == "layerscope.profile/1"
    assert profile["complete"] is True and profile["runs"] == runs
    assert len(profile["end_to_end"]["samples_ms"]) == runs
    assert profile["end_to_end"]["kind"] == "measured"
    expected_ids = runnable[4]
    if expected_ids is not None:
        ids = {n["id"] for n in profile["nodes"]}
        assert ids == expected_ids
        for node in profile["nodes"]:
            assert len(node["time"]["samples_ms"]) == runs
            assert node["kind"] in KINDS and node.get("compute_unit")
    for transfer in profile.get("transfers", []):
        assert transfer["kind"] in ("edge", "input", "output", "runtime_copy")
        assert transfer["time"]["kind"] == ("measured" if transfer["kind"] == "runtime_copy" else "estimated")


def test_9_cancel_stops_the_job_and_returns_the_runs_measured(wire, runnable):
    assert load(wire, runnable)["type"] == "loaded"
    request_id = wire.send({"type": "profile", "settings": {"runs": LONG_RUNS, "warmup": 0},
                            "partial_every": LONG_RUNS})
    while True:
        message = wire.recv_for(request_id, (), timeout=30)
        assert message["type"] not in ("error", "busy", "result"), message
        if message["type"] == "progress" and message["done"] >= 3:
            break
    started = time.monotonic()
    cancel_id = wire.send({"type": "cancel", "job": request_id})
    assert wire.recv_for(cancel_id, ("cancelling",))["type"] == "cancelling"
    result = wire.recv_for(request_id, ("result",), timeout=30)
    assert result["type"] == "result", result
    assert time.monotonic() - started < 20
    profile = result["profile"]
    assert profile["complete"] is False and profile["error"] == "cancelled"
    assert 0 < profile["runs"] < LONG_RUNS
    assert wire.request({"type": "describe"}, ("description",))["busy"] is False
    assert_error(wire.request({"type": "cancel", "job": request_id}, ("cancelling",)), "no_job")


def test_4_a_second_client_asking_to_profile_is_told_busy(connect, runnable):
    first, second = connect(), connect()
    assert load(second, runnable)["type"] == "loaded"
    assert load(first, runnable)["type"] == "loaded"
    request_id = first.send({"type": "profile", "settings": {"runs": LONG_RUNS, "warmup": 0},
                             "partial_every": LONG_RUNS})
    assert first.recv_for(request_id, ("accepted",))["type"] == "accepted"
    try:
        reply = second.request({"type": "profile", "settings": {"runs": 2}}, ("accepted", "result"))
        assert reply["type"] == "busy", reply
        assert reply["message"]
        assert second.request({"type": "describe"}, ("description",))["busy"] is True
        assert_serving(second)  # busy is about jobs: the agent still answers
    finally:
        first.send({"type": "cancel", "job": request_id})
        final = first.recv_for(request_id, ("result",), timeout=30)
        # A cancel before the first run finished ends the job with profile_failed instead of a result.
        assert final["type"] == "result" or final.get("code") == "profile_failed", final


# ---------------------------------------------------------------------------- 10a. intermediates

def test_10a_intermediates_come_back_measured_or_are_refused_by_name(wire, runnable):
    """Capability `intermediates`: chosen node outputs of one run, every figure measured."""
    import base64
    import io

    import numpy as np
    if "intermediates" not in wire.welcome.get("capabilities", []):
        pytest.skip("the agent does not offer intermediates")
    assert_error(wire.request({"type": "intermediates", "tensors": ["a"]}, ("intermediates_result",)), "not_loaded")
    assert load(wire, runnable)["type"] == "loaded"
    backend = runnable[0]
    reply = wire.request({"type": "intermediates", "tensors": ["a", "d"] if backend == "onnxruntime" else ["x"]},
                         ("intermediates_result",), timeout=120)
    if backend != "onnxruntime" and reply["type"] == "error":
        assert_error(reply, reply["code"])  # a named refusal (backend_unavailable, bad_settings)
        return
    assert reply["type"] == "intermediates_result" and reply["kind"] == "measured", reply
    assert not kinds_missing(reply)
    with np.load(io.BytesIO(base64.b64decode(reply["npz_b64"])), allow_pickle=False) as data:
        for tensor in reply["tensors"]:
            assert list(data[tensor["key"]].shape) == tensor["shape"]
    assert_error(wire.request({"type": "intermediates", "tensors": ["no such tensor"]}, ("intermediates_result",)),
                 "bad_settings")
    assert_error(wire.request({"type": "intermediates", "tensors": []}, ("intermediates_result",)), "bad_message")
    assert_serving(wire)
