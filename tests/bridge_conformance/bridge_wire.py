"""Helpers of the bridge conformance suite: a bare protocol connection and a local agent process.

Used by tests/bridge_conformance (and tests/engine/test_bridge.py to start agents).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
PROTOCOL = "layerscope-bridge/1"


@dataclass
class AgentHandle:
    address: str                      # ws://host:port
    token: Optional[str]
    process: Optional[subprocess.Popen] = None
    cache_dir: Optional[Path] = None
    log_path: Optional[Path] = None   # the agent's stderr (its refusal log lines)

    @property
    def local(self) -> bool:
        return self.process is not None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path else ""

    def peak_rss_bytes(self) -> Optional[int]:
        """Peak resident memory of a local agent so far (VmHWM from /proc); None where it cannot be read."""
        return _proc_status_bytes(self.process.pid, "VmHWM") if self.process is not None else None

    def reset_peak_rss(self) -> bool:
        """Start a new peak (Linux: 5 > /proc/PID/clear_refs); False where it is not possible."""
        if self.process is None:
            return False
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def rss_bytes(self) -> Optional[int]:
        return _proc_status_bytes(self.process.pid, "VmRSS") if self.process is not None else None


def _proc_status_bytes(pid: int, key: str) -> Optional[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def start_agent_process(tmp_dir: Path, token: Optional[str] = None, port: int = 0,
                        extra: tuple[str, ...] = (), timeout: float = 60.0,
                        env_extra: Optional[dict] = None) -> AgentHandle:
    """`python -m engine agent` on 127.0.0.1; returns once it prints its address."""
    cache = tmp_dir / "agent-cache"
    command = [sys.executable, "-m", "engine", "agent", "--listen", f"127.0.0.1:{port}", "--cache-dir", str(cache),
               *extra]
    if token:
        command += ["--token", token]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("LAYERSCOPE_AGENT_TOKEN", None)
    env.update(env_extra or {})
    tmp_dir.mkdir(parents=True, exist_ok=True)
    log_path = tmp_dir / f"agent-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:  # a file, not a pipe: a chatty agent never blocks on a full pipe
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line or process.poll() is not None:
            break
    match = re.search(r"ws://[\d.]+:\d+", line or "")
    if match is None:
        process.kill()
        process.wait(timeout=10)
        raise RuntimeError(f"the agent did not start: {line!r} {log_path.read_text()!r}")
    return AgentHandle(match.group(0), token, process, cache, log_path)


def stop_agent_process(handle: AgentHandle) -> None:
    if handle.process is not None and handle.process.poll() is None:
        handle.process.terminate()
        try:
            handle.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            handle.process.kill()
            handle.process.wait(timeout=5)
    if handle.process is not None:
        if handle.process.stdout is not None:
            handle.process.stdout.close()


class Wire:
    """A bare protocol connection: JSON text out, parsed messages in, every wait bounded."""

    def __init__(self, address: str):
        from websockets.sync.client import connect
        import inspect
        legacy = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
        self.websocket = connect(address, open_timeout=10, compression=None, max_size=256 * 1024 * 1024,
                                 proxy=None, close_timeout=2, **legacy)
        self._next = 0

    def new_id(self) -> str:
        self._next += 1
        return f"c{self._next}"

    def send(self, message: dict) -> str:
        message = dict(message)
        message.setdefault("id", self.new_id())
        self.websocket.send(json.dumps(message))
        return message["id"]

    def send_raw(self, data) -> None:
        self.websocket.send(data)

    def recv(self, timeout: float = 10.0) -> dict:
        data = self.websocket.recv(timeout=timeout)
        assert isinstance(data, str), "agent to client messages are text in version 1"
        message = json.loads(data)
        assert isinstance(message, dict) and isinstance(message.get("type"), str)
        assert "id" in message, f"message without id: {message}"
        return message

    def recv_for(self, request_id: Optional[str], types: tuple[str, ...] = (), timeout: float = 10.0) -> dict:
        """Next message about `request_id` (skipping others) of one of `types` (or an error/busy)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.01, deadline - time.monotonic()))
            if message.get("id") != request_id:
                continue
            if not types or message["type"] in types or message["type"] in ("error", "busy"):
                return message

    def request(self, message: dict, types: tuple[str, ...], timeout: float = 10.0) -> dict:
        return self.recv_for(self.send(message), types, timeout)

    def hello(self, token: Optional[str], protocols=(PROTOCOL,)) -> dict:
        message = {"type": "hello", "protocols": list(protocols), "client": "conformance-suite"}
        if token is not None:
            message["token"] = token
        return self.request(message, ("welcome",))

    def close(self) -> None:
        try:
            self.websocket.close()
        except Exception:
            pass


def tiny_onnx_bytes() -> bytes:
    """Conv-Relu-Conv-Add-Relu on 1x3x32x32: small, fast, several node ids."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(7)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"], name="relu1"),
             helper.make_node("Conv", ["b", "w2"], ["c"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["b", "c"], ["d"], name="add"),
             helper.make_node("Relu", ["d"], ["y"], name="relu2")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32, 32])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="conformance")
    model.ir_version = 8
    return model.SerializeToString()
