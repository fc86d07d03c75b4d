"""Hostile and broken input: what every layerscope-bridge/1 agent must survive (docs/bridge-protocol.md,
section 12, "Limits an agent enforces").

Each test sends what a careless or hostile client could, then checks the reply (a short error, never an
`internal` one or a traceback), that the agent keeps serving, and, for an agent started here, its memory:
peak resident memory (VmHWM from /proc) may grow by at most twice max_message_bytes plus the model served
and a fixed allowance for the allocator and threads.
"""
from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zipfile
from contextlib import contextmanager

import numpy as np
import pytest

from tests.bridge_conformance.bridge_wire import PROTOCOL, Wire
from tests.bridge_conformance.test_conformance import (assert_error, assert_serving, chunk, load, runnable,
                                                       upload)

__all__ = ["runnable"]  # the fixture, shared with test_conformance

MiB = 1024 * 1024
ALLOWANCE = 32 * MiB       # allocator arenas, thread stacks, caches: not the input's size
ECHO_LIMIT = 2000          # an error reply, whole, in characters


def reply_is_short(message: dict) -> None:
    assert len(json.dumps(message)) < ECHO_LIMIT, f"a {len(json.dumps(message))}-character reply"


@contextmanager
def memory_bound(agent, welcome: dict, served: int = 0):
    """Fails if the local agent's peak memory grows beyond 2 x max_message_bytes + `served` + ALLOWANCE."""
    local = agent.local and agent.reset_peak_rss()
    before = agent.rss_bytes() if local else None
    yield
    if not local or before is None:
        return
    growth = agent.peak_rss_bytes() - before
    limit = 2 * welcome["limits"]["max_message_bytes"] + served + ALLOWANCE
    assert growth < limit, f"peak memory grew by {growth / MiB:.0f} MiB (bound {limit / MiB:.0f} MiB)"


def streamed_zip_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, size: int, fill: bytes = b"a") -> None:
    """An entry of `size` repeated bytes, written a MiB at a time (the test never holds it whole)."""
    info.compress_type = zipfile.ZIP_DEFLATED
    block = fill * MiB
    with zf.open(info, "w", force_zip64=size > 2**31) as out:
        for offset in range(0, size, MiB):
            out.write(block[:min(MiB, size - offset)])


def loaded_wire(connect, runnable) -> Wire:
    wire = connect()
    assert load(wire, runnable)["type"] == "loaded"
    return wire


# ---------------------------------------------------------------------------- archives

def test_12_a_symlink_entry_whose_target_text_is_a_compression_bomb_gets_a_short_refusal(agent, wire):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pkg.mlpackage/Manifest.json", "{}")
        link = zipfile.ZipInfo("pkg.mlpackage/Data/weights")
        link.external_attr = 0o120777 << 16
        # Below the model limit, so that the link itself is what is refused (the bomb was 100 MiB).
        streamed_zip_entry(zf, link, min(100 * MiB, wire.welcome["limits"]["max_model_bytes"] // 2))
    assert len(buffer.getvalue()) < 1 * MiB
    with memory_bound(agent, wire.welcome):
        reply = upload(wire, buffer.getvalue(), "bomb.mlpackage.zip", "mlpackage-zip")
    assert_error(reply, "unsafe_archive")
    reply_is_short(reply)
    assert_serving(wire)


def test_12_a_zip_declaring_more_than_the_model_limit_is_refused_before_unpacking(agent, wire):
    limit = wire.welcome["limits"]["max_model_bytes"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("pkg.mlpackage/Manifest.json", "{}")
        streamed_zip_entry(zf, zipfile.ZipInfo("pkg.mlpackage/Data/weights.bin"), limit + MiB, b"\0")
    assert len(buffer.getvalue()) < limit // 10
    written_before = _bytes_written(agent)
    with memory_bound(agent, wire.welcome):
        reply = upload(wire, buffer.getvalue(), "big.mlpackage.zip", "mlpackage-zip")
    assert_error(reply, "model_too_large")
    written = _bytes_written(agent)
    if written is not None:  # the upload itself is written; nothing of the unpacked content is
        assert written - written_before < 2 * len(buffer.getvalue()) + MiB, written - written_before
    assert_serving(wire)


def _bytes_written(agent):
    """Bytes a local agent has written with write(2) so far (/proc/PID/io wchar), else None."""
    if not agent.local:
        return None
    try:
        for line in open(f"/proc/{agent.process.pid}/io"):
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------- frames and connections

def test_12_frames_before_hello_are_capped_far_below_the_message_limit(agent):
    """20 connections before hello, each sending a 15 MiB frame: refused without holding them in memory."""
    probe = Wire(agent.address)
    welcome = probe.hello(agent.token)
    probe.close()
    pre_hello = welcome["limits"].get("pre_hello_max_message_bytes")
    assert pre_hello is not None and pre_hello <= welcome["limits"]["max_message_bytes"] // 16
    frame = b"\0" * (15 * MiB)
    connections = []
    with memory_bound(agent, welcome):
        for _ in range(20):
            try:
                connection = Wire(agent.address)
            except Exception:
                continue  # the connection cap may refuse some: that is allowed too
            connections.append(connection)
            try:
                connection.send_raw(frame)
            except Exception:
                pass  # closed by the agent (1009) while sending: what is wanted
        for connection in connections:
            connection.close()
    fresh = Wire(agent.address)
    try:
        assert fresh.hello(agent.token)["type"] == "welcome"
        assert_serving(fresh)
    finally:
        fresh.close()


def test_12_connections_beyond_the_cap_are_closed_and_the_agent_serves_again_after(agent, wire):
    from websockets.exceptions import ConnectionClosed, InvalidHandshake
    cap = wire.welcome["limits"].get("max_connections")
    assert isinstance(cap, int) and cap > 0, "welcome.limits.max_connections"
    opened, refused = [], 0
    try:
        for _ in range(cap + 3):
            try:
                opened.append(Wire(agent.address))
            except (OSError, InvalidHandshake):
                refused += 1
        # A refused connection is closed at once with 1013 (try again later); the others stay silent
        # until their hello deadline.  Poll them all for a few seconds.
        closed: set[int] = set()
        deadline = time.monotonic() + 5
        while refused + len(closed) < 3 and time.monotonic() < deadline:
            for index, connection in enumerate(opened):
                if index in closed:
                    continue
                try:
                    connection.websocket.recv(timeout=0.02)
                except TimeoutError:
                    continue
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None and exc.rcvd.code == 1013, exc
                    closed.add(index)
        refused += len(closed)
        assert refused >= 3, f"{cap + 3} connections opened with {refused} refused (cap {cap})"
    finally:
        for connection in opened:
            connection.close()
    deadline = time.monotonic() + 5
    while True:  # the agent notices the closes asynchronously
        try:
            fresh = Wire(agent.address)
            welcome = fresh.hello(agent.token)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        assert welcome["type"] == "welcome"
        assert_serving(fresh)
    finally:
        fresh.close()


# ---------------------------------------------------------------------------- run inputs

def compressed_npz_declaring(nbytes: int) -> bytes:
    """An .npz whose one float32 array of zeros takes `nbytes` unpacked, written without holding it."""
    buffer = io.BytesIO()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (nbytes // 4,)})
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as out:
            out.write(header.getvalue())
            block = b"\0" * MiB
            for offset in range(0, nbytes, MiB):
                out.write(block[:min(MiB, nbytes - offset)])
    return buffer.getvalue()


def test_12_run_with_a_small_npz_that_unpacks_huge_is_refused_without_blocking_others(agent, connect, runnable):
    import base64
    wire = loaded_wire(connect, runnable)
    other = connect()
    npz = compressed_npz_declaring(384 * MiB)
    assert len(npz) < wire.welcome["limits"]["max_message_bytes"] // 2
    encoded = base64.b64encode(npz).decode("ascii")
    pongs = []

    def ping_meanwhile() -> None:
        for _ in range(10):
            pongs.append(other.request({"type": "ping"}, ("pong",), timeout=10)["type"])

    with memory_bound(agent, wire.welcome):
        request_id = wire.send({"type": "run", "inputs_npz_b64": encoded})
        pinger = threading.Thread(target=ping_meanwhile)
        pinger.start()
        reply = wire.recv_for(request_id, ("run_result",), timeout=60)
        pinger.join(timeout=60)
    assert_error(reply, "bad_message")
    reply_is_short(reply)
    assert pongs == ["pong"] * 10
    assert_serving(wire)


# ---------------------------------------------------------------------------- load memory budget

def constant_of_shape_bomb(side: int) -> bytes:
    """A model of a few hundred bytes whose ConstantOfShape makes a side x side float tensor."""
    from onnx import TensorProto, helper, numpy_helper
    shape = numpy_helper.from_array(np.array([side, side], dtype=np.int64), "shape")
    nodes = [helper.make_node("Constant", [], ["s"], value=shape),
             helper.make_node("ConstantOfShape", ["s"], ["big"],
                              value=numpy_helper.from_array(np.array([1.0], np.float32))),
             helper.make_node("ReduceSum", ["big"], ["r"], keepdims=0),
             helper.make_node("Add", ["x", "r"], ["y"])]
    graph = helper.make_graph(nodes, "bomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def test_12_a_tiny_model_whose_constant_needs_gigabytes_is_refused_by_the_load_memory_budget(agent, connect,
                                                                                             runnable):
    if runnable[0] != "onnxruntime":
        pytest.skip("an ONNX model needs the onnxruntime backend")
    wire = loaded_wire(connect, runnable)  # the backend's libraries are in memory before measuring
    bomb = constant_of_shape_bomb(1 << 17)   # 64 GiB of float32
    assert len(bomb) < 400
    done = upload(wire, bomb, "bomb.onnx", "onnx")
    assert done["type"] == "upload_done"
    with memory_bound(agent, wire.welcome, served=len(bomb)):
        reply = wire.request({"type": "load", "model": done["sha256"], "backend": "onnxruntime"}, ("loaded",),
                             timeout=120)
    assert_error(reply, "load_failed")
    assert "memory" in reply["message"] and "budget" in reply["message"], reply
    reply_is_short(reply)
    assert_serving(wire)


# ---------------------------------------------------------------------------- external data

def _external_tensor(name: str):
    from onnx import TensorProto, helper
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [4], [0.0] * 4)
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "meta.json"), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def external_data_model(where: str) -> bytes:
    """A model whose Constant reads 'meta.json' beside the model: in the graph, a subgraph or a local function."""
    from onnx import TensorProto, helper
    constant = helper.make_node("Constant", [], ["c"], value=_external_tensor("secret"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    functions = []
    opsets = [helper.make_opsetid("", 17)]
    if where == "graph":
        nodes = [constant, helper.make_node("Add", ["x", "c"], ["y"])]
    elif where == "subgraph":
        branch = helper.make_graph([constant], "branch", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT,
                                                                                            [4])])
        flag = helper.make_node("Constant", [], ["flag"], value=helper.make_tensor("f", TensorProto.BOOL, [], [True]))
        nodes = [flag, helper.make_node("If", ["flag"], ["c2"], then_branch=branch, else_branch=branch),
                 helper.make_node("Add", ["x", "c2"], ["y"])]
    else:  # a model-local function
        function = helper.make_function("local", "Leak", ["a"], ["b"],
                                        [constant, helper.make_node("Add", ["a", "c"], ["b"])], opsets)
        functions = [function]
        opsets = opsets + [helper.make_opsetid("local", 1)]
        nodes = [helper.make_node("Leak", ["x"], ["y"], domain="local")]
    graph = helper.make_graph(nodes, "external", [x], [y])
    model = helper.make_model(graph, opset_imports=opsets, functions=functions)
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("where", ["graph", "subgraph", "function"])
def test_12_external_data_anywhere_in_a_model_is_refused(wire, runnable, where):
    if runnable[0] != "onnxruntime":
        pytest.skip("an ONNX model needs the onnxruntime backend")
    done = upload(wire, external_data_model(where), f"external-{where}.onnx", "onnx")
    assert done["type"] == "upload_done"
    reply = wire.request({"type": "load", "model": done["sha256"], "backend": "onnxruntime"}, ("loaded",),
                         timeout=60)
    assert reply["type"] == "error" and reply["code"] in ("bad_settings", "load_failed"), reply
    assert "external" in reply["message"], reply
    assert_serving(wire)


# ---------------------------------------------------------------------------- settings and odd JSON

@pytest.mark.parametrize("settings_json, field", [
    ('{"size": [1e400, 32]}', "size"),
    ('{"inputs": 5}', "inputs"),
    ('{"threads": 1099511627776}', "threads"),
    ('{"runs": -3}', "runs"),
    ('{"warmup": "3"}', "warmup"),
    ('{"mode": ["exact"]}', "mode"),
    ('{"input_shapes": {"x": [1, 3, "32", 32]}}', "input_shapes"),
])
def test_12_out_of_range_settings_are_bad_settings_naming_the_field_and_the_session_survives(
        connect, runnable, settings_json, field):
    wire = loaded_wire(connect, runnable)
    wire.send_raw('{"type": "profile", "id": "p1", "settings": %s}' % settings_json)
    reply = wire.recv_for("p1", ("result",))
    assert_error(reply, "bad_settings")
    assert reply.get("field") == field or field in reply["message"], reply
    reply_is_short(reply)
    result = wire.request({"type": "profile", "settings": {"runs": 2, "warmup": 0}}, ("result",), timeout=60)
    assert result["type"] == "result", result


def test_12_a_5000_digit_number_gets_an_answer_not_an_internal_error(wire):
    wire.send_raw('{"type": "ping", "id": "big", "runs": ' + "9" * 5000 + "}")
    reply = wire.recv()  # an agent that cannot parse the text cannot read its id either
    assert reply["type"] == "pong" or (reply["code"] == "bad_message" and reply["id"] in ("big", None)), reply
    wire.send_raw('{"type": "profile", "id": "big2", "settings": {"runs": ' + "9" * 5000 + "}}")
    reply = wire.recv()
    assert reply["type"] == "error" and reply["code"] in ("bad_message", "bad_settings", "not_loaded"), reply
    reply_is_short(reply)
    assert_serving(wire)


def test_12_a_huge_request_id_or_type_is_not_echoed(wire):
    limit = wire.welcome["limits"]["max_message_bytes"]
    wire.send_raw(json.dumps({"type": "x" * (limit // 4), "id": "y" * (limit // 4)}))
    reply = wire.recv()
    assert reply["type"] == "error" and reply["code"] in ("bad_message", "unknown_type"), reply["code"]
    reply_is_short(reply)
    assert_serving(wire)


def test_12_a_token_with_a_lone_surrogate_is_refused_like_any_wrong_token(agent):
    if agent.token is None:
        pytest.skip("the agent's token is not known (give --agent-token)")
    from websockets.exceptions import ConnectionClosed
    connection = Wire(agent.address)
    try:
        connection.send_raw('{"type": "hello", "id": "h", "protocols": ["%s"], "token": "\\ud800"}' % PROTOCOL)
        reply = connection.recv_for("h", ("welcome",))
        assert_error(reply, "unauthorized")
        with pytest.raises(ConnectionClosed) as caught:
            connection.websocket.recv(timeout=5)
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 4401
        time.sleep(reply.get("retry_after_s", 0))  # leave the loopback address in good standing
    finally:
        connection.close()


# ---------------------------------------------------------------------------- cache

def begin(wire: Wire, sha: str, size: int, timeout: float = 5.0) -> dict:
    """upload_begin, retried while the agent has not yet parked an upload whose connection just closed."""
    deadline = time.monotonic() + timeout
    while True:
        request_id = wire.send({"type": "upload_begin", "sha256": sha, "size": size, "format": "file"})
        reply = wire.recv_for(request_id, ("upload_ready", "upload_done"))
        if reply["type"] != "error" or time.monotonic() > deadline:
            return reply
        time.sleep(0.1)


def test_12_abandoned_uploads_count_against_the_cache_and_the_oldest_give_way(wire, connect):
    limits = wire.welcome["limits"]
    size = limits["max_model_bytes"]
    abandoned = []
    for index in range(limits["cache_bytes"] // size + 1):  # more announced bytes than the cache holds
        sha = hashlib.sha256(f"abandoned-{index}-{time.time()}".encode()).hexdigest()
        first = connect()
        ready = begin(first, sha, size)
        assert ready["type"] == "upload_ready", ready
        first.send_raw(chunk(ready["upload"], 0, b"\0" * 4096))
        assert_serving(first)
        first.close()
        abandoned.append(sha)
    # The first abandoned upload gave way to the last: resuming it starts from nothing.
    again = begin(wire, abandoned[0], size)
    assert again["type"] == "upload_ready" and again["offset"] == 0, again
    # ...while the newest is still there to resume.
    newest = begin(connect(), abandoned[-1], size)
    assert newest["type"] == "upload_ready" and newest["offset"] == 4096, newest
