"""Desktop side of the bridge: a synchronous client for one agent connection.

`BridgeClient` speaks layerscope-bridge/1 over a websockets *sync* connection,
so it needs no event loop and can live in a GUI worker thread.  Every wait has
a timeout (engine.bridge.protocol: REPLY/LOAD/STALL/CANCEL); a wait that runs
out raises `BridgeTimeout`; a connection that drops raises
`BridgeConnectionLost`, which carries the last partial profile document the
agent streamed, so completed runs are never lost with the agent.

Errors are TargetErrors (engine.targets) with one readable line, so the CLI
and the GUI show them like any other target's.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import os
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlsplit

from engine.bridge import protocol as P
from engine.bridge.cache import format_for_name
from engine.targets.settings import TargetError

__all__ = ["BridgeClient", "BridgeError", "BridgeBusy", "BridgeTimeout", "BridgeConnectionLost", "normalize_address",
           "file_sha256", "package_archive"]

CLIENT_NAME = "layerscope-desktop/0.1.0"
# Results can be large (every sample of every node): accept up to this from an agent.
CLIENT_MAX_MESSAGE_BYTES = 256 * P.MiB


class BridgeError(TargetError):
    """The agent answered with an error.  `code` is one of engine.bridge.protocol.ERROR_CODES."""

    def __init__(self, code: str, message: str, details: Optional[Mapping] = None):
        super().__init__(message)
        self.code = code
        self.details = dict(details or {})


class BridgeBusy(BridgeError):
    def __init__(self, message: str, details: Optional[Mapping] = None):
        super().__init__("busy", message, details)


class BridgeTimeout(BridgeError):
    def __init__(self, message: str):
        super().__init__("timeout", message)


class BridgeConnectionLost(BridgeError):
    """The connection ended (agent killed, network gone).  `partial`: last partial profile document, or None."""

    def __init__(self, message: str, partial: Optional[dict] = None):
        super().__init__("connection_lost", message)
        self.partial = partial


def normalize_address(address: str) -> str:
    """'host:port', 'ws://host:port[/...][?query]' -> 'ws://host:port' (query and path dropped)."""
    text = address.strip()
    if "://" not in text:
        text = "ws://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("ws", "wss"):
        raise TargetError(f"agent address {address!r}: expected ws://HOST:PORT or HOST:PORT")
    if not parts.hostname:
        raise TargetError(f"agent address {address!r} has no host")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme}://{host}:{parts.port or P.DEFAULT_PORT}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(1 << 20)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def package_archive(folder: Path, dest: Path, layer_map: Optional[Path] = None) -> Path:
    """A deterministic zip of a .mlpackage folder (same bytes for the same content -> same sha256).

    `layer_map` (the package's OUT.layermap.json from `layerscope convert`) goes beside the
    package folder, under the name the agent looks for (docs/bridge-protocol.md §5).
    """
    from engine.convert.layermap import layer_map_path

    root_name = folder.name
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as zf:
        if layer_map is not None:
            info = zipfile.ZipInfo(layer_map_path(Path(root_name)).name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o100644 << 16
            zf.writestr(info, Path(layer_map).read_bytes())
        for path in sorted(p for p in folder.rglob("*")):
            if path.is_symlink():
                raise TargetError(f"{path}: links inside a model package are not uploaded; replace the link "
                                  "by the file it points to")
            relative = f"{root_name}/{path.relative_to(folder).as_posix()}"
            info = zipfile.ZipInfo(relative + ("/" if path.is_dir() else ""), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = ((0o40755 if path.is_dir() else 0o100644) << 16)
            if path.is_dir():
                zf.writestr(info, b"")
            else:
                with open(path, "rb") as source, zf.open(info, "w") as out:
                    while True:
                        block = source.read(1 << 20)
                        if not block:
                            break
                        out.write(block)
    return dest


@dataclass
class TrafficStats:
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


@dataclass
class UploadResult:
    sha256: str
    size: int
    cached: bool
    seconds: float
    format: str
    layer_map: bool = False  # the agent stored the package's layer map with it


class BridgeClient:
    """One connection to one agent.  Not thread-safe, except `cancel_event` checks inside profile()."""

    def __init__(self, address: str, token: Optional[str] = None, connect_timeout: float = P.CONNECT_TIMEOUT_S,
                 reply_timeout: float = P.REPLY_TIMEOUT_S):
        self.address = normalize_address(address)
        self.token = token
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self.websocket = None
        self.welcome: dict = {}
        self.stats = TrafficStats()
        self._ids = itertools.count(1)

    # -- connection -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        if self.websocket is None:
            return False
        try:
            from websockets.protocol import State
            return self.websocket.state is State.OPEN
        except Exception:
            return True

    @property
    def limits(self) -> dict:
        return dict(self.welcome.get("limits", {}))

    def connect(self) -> dict:
        """Open the connection and say hello; returns the welcome message.  Raises BridgeError."""
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidURI
        from websockets.sync.client import connect
        self.close()
        try:
            self.websocket = connect(self.address, open_timeout=self.connect_timeout, compression=None,
                                     max_size=CLIENT_MAX_MESSAGE_BYTES, proxy=None, ping_interval=20,
                                     ping_timeout=20, close_timeout=2, user_agent_header=CLIENT_NAME,
                                     **sync_connect_options())
        except TimeoutError:  # before OSError: TimeoutError is one
            raise BridgeTimeout(f"the agent at {self.address} did not complete the WebSocket handshake within "
                                f"{self.connect_timeout:.0f} s") from None
        except ConnectionRefusedError as exc:
            raise BridgeError("unreachable", f"cannot reach the agent at {self.address}: "
                                             f"{exc.strerror or exc}; is `layerscope agent` "
                                             "running there?") from None
        except (ConnectionClosed, InvalidMessage, OSError) as exc:
            raise BridgeError("unreachable", f"the agent at {self.address} dropped the connection during the "
                                             f"handshake ({_closed_text(exc)}); it may be stopping or restarting: "
                                             "is `layerscope agent` running there?") from None
        except (InvalidHandshake, InvalidURI) as exc:
            raise BridgeError("unreachable", f"{self.address} is not a LayerScope agent ({exc})") from None
        hello = {"type": "hello", "id": self._next_id(), "protocols": list(P.SUPPORTED_PROTOCOLS),
                 "client": CLIENT_NAME}
        if self.token:
            hello["token"] = self.token
        try:
            self.welcome = self.request(hello, ("welcome",))
        except BridgeConnectionLost as exc:
            self.close()
            raise BridgeError("unreachable", f"the agent at {self.address} closed the connection during hello "
                                             f"({exc})") from None
        except BridgeError:
            self.close()
            raise
        return self.welcome

    def close(self) -> None:
        if self.websocket is not None:
            try:
                self.websocket.close()
            except Exception:
                pass
            self.websocket = None

    def __enter__(self) -> "BridgeClient":
        if not self.connected:
            self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- messages -------------------------------------------------------------------------

    def _next_id(self) -> str:
        return str(next(self._ids))

    def send(self, message: Mapping[str, Any]) -> str:
        if self.websocket is None:
            raise BridgeConnectionLost(f"not connected to the agent at {self.address}")
        text = P.encode(message)
        try:
            self.websocket.send(text)
        except Exception as exc:
            raise BridgeConnectionLost(f"lost the connection to the agent at {self.address} ({_closed_text(exc)})") \
                from None
        self.stats.messages_sent += 1
        self.stats.bytes_sent += len(text)
        return str(message.get("id"))

    def send_binary(self, data: bytes) -> None:
        if self.websocket is None:
            raise BridgeConnectionLost(f"not connected to the agent at {self.address}")
        try:
            self.websocket.send(data)
        except Exception as exc:
            raise BridgeConnectionLost(f"lost the connection to the agent at {self.address} during the upload "
                                       f"({_closed_text(exc)})") from None
        self.stats.messages_sent += 1
        self.stats.bytes_sent += len(data)

    def receive(self, timeout: float) -> dict:
        """The next message from the agent (validated).  Raises BridgeTimeout / BridgeConnectionLost."""
        from websockets.exceptions import ConnectionClosed
        if self.websocket is None:
            raise BridgeConnectionLost(f"not connected to the agent at {self.address}")
        while True:
            try:
                data = self.websocket.recv(timeout=timeout)
            except TimeoutError:
                raise BridgeTimeout(f"the agent at {self.address} sent nothing for {timeout:.0f} s") from None
            except ConnectionClosed as exc:
                self.websocket = None
                raise BridgeConnectionLost(f"lost the connection to the agent at {self.address} "
                                           f"({_closed_text(exc)})") from None
            self.stats.messages_received += 1
            self.stats.bytes_received += len(data)
            if isinstance(data, bytes):
                continue  # no binary agent->client messages in version 1
            try:
                return P.decode(data, P.AGENT_MESSAGES)
            except P.ProtocolError as exc:
                if exc.code == "unknown_type":
                    continue  # a newer agent's message: ignore (keys and types may be added)
                raise BridgeError("bad_message", f"the agent at {self.address} sent an invalid message: "
                                                 f"{exc.message}") from None

    def request(self, message: dict, expect: tuple[str, ...], timeout: Optional[float] = None) -> dict:
        """Send a request and wait for its reply of one of the `expect` types (other ids are skipped)."""
        request_id = self.send(message)
        deadline = time.monotonic() + (timeout or self.reply_timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BridgeTimeout(f"the agent at {self.address} did not answer {message['type']} within "
                                    f"{timeout or self.reply_timeout:.0f} s")
            reply = self.receive(remaining)
            if reply.get("id") not in (request_id, None):
                continue
            self._raise_for(reply)
            if reply["type"] in expect:
                return reply

    def _raise_for(self, reply: dict) -> None:
        if reply["type"] == "error":
            details = {k: v for k, v in reply.items() if k not in ("type", "id", "code", "message")}
            raise BridgeError(reply["code"], f"the agent at {self.address} refused: {reply['message']} "
                                             f"[{reply['code']}]", details)
        if reply["type"] == "busy":
            raise BridgeBusy(f"the agent at {self.address} is busy: {reply['message']}", reply)

    # -- requests -------------------------------------------------------------------------

    def ping(self) -> float:
        start = time.perf_counter()
        self.request({"type": "ping", "id": self._next_id()}, ("pong",))
        return (time.perf_counter() - start) * 1000.0

    def describe(self) -> dict:
        return self.request({"type": "describe", "id": self._next_id()}, ("description",))

    def upload(self, path: Path, progress: Optional[Callable[[int, int], None]] = None,
               timeout_per_mb: float = 2.0) -> UploadResult:
        """Upload a model file (or .mlpackage folder, zipped with its layer map when one is beside
        it) unless the agent has it; resumes a partial one."""
        path = Path(path)
        temp: Optional[Path] = None
        try:
            if path.is_dir():
                from engine.convert.layermap import layer_map_path
                handle, name = tempfile.mkstemp(suffix=".mlpackage.zip")
                os.close(handle)
                temp = Path(name)
                beside = layer_map_path(path)  # sent with the package: results come back per ONNX node
                package_archive(path, temp, beside if beside.is_file() else None)
                source, fmt = temp, "mlpackage-zip"
            else:
                source, fmt = path, format_for_name(path.name)
            return self._upload_file(source, path.name, fmt, progress, timeout_per_mb)
        finally:
            if temp is not None:
                temp.unlink(missing_ok=True)

    def _upload_file(self, source: Path, name: str, fmt: str, progress, timeout_per_mb: float) -> UploadResult:
        size = source.stat().st_size
        sha256 = file_sha256(source)
        started = time.perf_counter()
        for attempt in range(3):
            request_id = self._next_id()
            reply = self.request({"type": "upload_begin", "id": request_id, "sha256": sha256, "size": size,
                                  "name": name, "format": fmt}, ("upload_ready", "upload_done"))
            if reply["type"] == "upload_done":
                return UploadResult(sha256, size, bool(reply["cached"]), time.perf_counter() - started,
                                    str(reply.get("format", fmt)), bool(reply.get("layer_map", False)))
            upload_id, offset = reply["upload"], int(reply["offset"])
            chunk = int(reply["chunk_bytes"])
            header_len = P.CHUNK_HEADER_BYTES
            buffer = bytearray(header_len + chunk)
            with open(source, "rb") as handle:
                handle.seek(offset)
                view = memoryview(buffer)
                while offset < size:
                    count = handle.readinto(view[header_len:header_len + min(chunk, size - offset)])
                    if not count:
                        break
                    buffer[:header_len] = P.pack_chunk_header(upload_id, offset)
                    self.send_binary(bytes(view[:header_len + count]))
                    offset += count
                    if progress is not None:
                        progress(offset, size)
            timeout = self.reply_timeout + timeout_per_mb * size / P.MiB
            try:
                done = self.request_reply_for(request_id, ("upload_done",), timeout)
            except BridgeError as exc:
                if exc.code == "bad_offset" and attempt < 2:
                    continue  # the agent says where it is: begin again, it resumes from there
                raise
            return UploadResult(sha256, size, False, time.perf_counter() - started, str(done.get("format", fmt)),
                                bool(done.get("layer_map", False)))
        raise BridgeError("bad_offset", f"the upload to {self.address} kept going out of step; try again")

    def request_reply_for(self, request_id: str, expect: tuple[str, ...], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BridgeTimeout(f"the agent at {self.address} did not confirm within {timeout:.0f} s")
            reply = self.receive(remaining)
            if reply.get("id") not in (request_id, None):
                continue
            self._raise_for(reply)
            if reply["type"] in expect:
                return reply

    def load(self, sha256: str, backend: Optional[str], compute_unit: Optional[str], settings: Mapping,
             timeout: float = P.LOAD_TIMEOUT_S, device: Optional[str] = None) -> dict:
        message = {"type": "load", "id": self._next_id(), "model": sha256, "settings": dict(settings)}
        if backend:
            message["backend"] = backend
        if compute_unit:
            message["compute_unit"] = compute_unit
        if device:
            message["device"] = device  # an iPhone or iPad of a Mac agent (coreml backend)
        return self.request(message, ("loaded",), timeout)

    def profile(self, settings: Mapping, granularity: str = "layer", partial_every: Optional[int] = None,
                progress: Optional[Callable[[dict], None]] = None,
                on_partial: Optional[Callable[[dict], None]] = None,
                cancel: Optional[threading.Event] = None, stall_timeout: float = P.STALL_TIMEOUT_S,
                cancel_grace: float = P.CANCEL_GRACE_S) -> dict:
        """Run a profile job; returns the `result` message.

        progress(message) for each progress message; on_partial(message) for each
        partial.  `cancel` set -> a cancel is sent, and the (incomplete) result
        still comes back.  Connection loss raises BridgeConnectionLost carrying
        the last partial profile document.
        """
        request_id = self._next_id()
        message = {"type": "profile", "id": request_id, "settings": dict(settings), "granularity": granularity}
        if partial_every:
            message["partial_every"] = int(partial_every)
        last_partial: Optional[dict] = None
        cancel_sent_at: Optional[float] = None
        try:
            self.send(message)
            last_heard = time.monotonic()
            while True:
                now = time.monotonic()
                if cancel is not None and cancel.is_set() and cancel_sent_at is None:
                    self.send({"type": "cancel", "id": self._next_id(), "job": request_id})
                    cancel_sent_at = now
                if cancel_sent_at is not None and now - cancel_sent_at > cancel_grace:
                    raise BridgeTimeout(f"the agent at {self.address} did not stop within {cancel_grace:.0f} s "
                                        "of the cancel")
                if now - last_heard > stall_timeout:
                    raise BridgeTimeout(f"the agent at {self.address} sent nothing for {stall_timeout:.0f} s "
                                        "while profiling")
                try:
                    reply = self.receive(0.2)
                except BridgeTimeout:
                    continue
                last_heard = time.monotonic()
                kind = reply["type"]
                if kind == "error" and reply.get("code") == "no_job":
                    continue  # a cancel that crossed the result
                if reply.get("id") != request_id:
                    continue
                self._raise_for(reply)
                if kind == "progress" and progress is not None:
                    progress(reply)
                elif kind == "partial":
                    last_partial = reply["profile"]
                    if on_partial is not None:
                        on_partial(reply)
                elif kind == "result":
                    return reply
        except BridgeConnectionLost as exc:
            raise BridgeConnectionLost(str(exc), last_partial) from None
        except BridgeTimeout as exc:
            # The agent may be wedged: drop the connection (a reconnect starts clean).
            self.close()
            lost = BridgeConnectionLost(str(exc), last_partial)
            lost.code = "timeout"
            raise lost from None

    def run(self, inputs_npz_b64: Optional[str] = None, timeout: Optional[float] = None) -> dict:
        message = {"type": "run", "id": self._next_id()}
        if inputs_npz_b64:
            message["inputs_npz_b64"] = inputs_npz_b64
        return self.request(message, ("run_result",), timeout or P.LOAD_TIMEOUT_S)

    def intermediates(self, names, inputs_npz_b64: Optional[str] = None, timeout: Optional[float] = None) -> dict:
        """The named tensors of one run on the agent (`intermediates_result`, arrays in `npz_b64`)."""
        message = {"type": "intermediates", "id": self._next_id(), "tensors": list(names)}
        if inputs_npz_b64:
            message["inputs_npz_b64"] = inputs_npz_b64
        return self.request(message, ("intermediates_result",), timeout or P.LOAD_TIMEOUT_S)

    def calibrate(self, compute_unit: Optional[str] = None, sizes=None, repeats: int = 5,
                  timeout: float = 120.0) -> dict:
        message: dict = {"type": "calibrate", "id": self._next_id(), "repeats": repeats}
        if compute_unit:
            message["compute_unit"] = compute_unit
        if sizes:
            message["sizes"] = list(sizes)
        return self.request(message, ("calibration",), timeout)


def sync_connect_options() -> dict:
    """websockets >= 16 wants `legacy=True` to return a plain connection (not a context manager)."""
    import inspect
    from websockets.sync.client import connect
    return {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}


def _closed_text(exc: BaseException) -> str:
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is not None:
        return f"closed by the agent: code {rcvd.code}{' ' + rcvd.reason if rcvd.reason else ''}"
    text = str(exc)
    return text or type(exc).__name__


def npz_b64(arrays: Mapping[str, Any]) -> str:
    import base64
    import numpy as np
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def arrays_from_npz_b64(text: str) -> dict:
    import base64
    import numpy as np
    with np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
