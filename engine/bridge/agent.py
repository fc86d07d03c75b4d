"""The Python reference agent: `layerscope agent [--listen 127.0.0.1:7878] [--token T] ...`.

One asyncio event loop serves every connection (websockets); the heavy work
(load/compile, profile, run, calibrate) runs in a worker thread, one job at a
time for the whole agent.  A request for a job while one runs gets `busy`.

Per connection: a hello (within HELLO_TIMEOUT_S, token checked in constant
time), then any requests.  One writer task per connection sends every
outgoing message in order; worker threads hand messages to it with
`call_soon_threadsafe`, never touching the socket themselves.

Robustness: a malformed or oversized message gets an `error` reply and the
connection goes on; an exception in a handler becomes an `internal` error,
never a dead server.  A connection that goes away cancels its job and parks
its uploads (resumable).  Security: loopback only unless --listen names
another address, and then a token is required; browsers are kept out by
refusing handshakes that carry an Origin header.

Hostile input (docs/bridge-protocol.md, "Limits an agent enforces"): frames
before hello are capped far below the normal limit, connections are capped,
a peer that fails the token check waits longer after each failure (and every
refusal is logged on stderr), error replies quote at most a few hundred
characters of what was sent, npz inputs are size-checked from their headers
and decoded in a worker thread, a load may create at most the configured
tensor bytes, cached models are re-hashed (remembered by size and times)
before they are served or loaded, and SIGTERM ends the agent within a few
seconds even while a job runs.
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hmac
import io
import ipaddress
import json
import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from engine.bridge import protocol as P
from engine.bridge.backends import BackendUnavailable, default_backends, device_description
from engine.bridge.cache import ModelCache, Upload, default_cache_dir
from engine.bridge.protocol import ProtocolError
from engine.ir import ModelLoadError
from engine.profile import TimingStats
from engine.targets.isolated import start_fork_server
from engine.targets.settings import TargetError

__all__ = ["Agent", "AgentConfig", "run_agent", "is_loopback", "parse_listen"]

AGENT_NAME = "layerscope-python-agent"
AGENT_VERSION = "0.1.0"
PROGRESS_INTERVAL_S = 0.05   # at most 20 progress messages a second per job
STOP_GRACE_S = 3.0           # after SIGTERM/SIGINT, a job that has not stopped by then is abandoned
INCOMING_QUEUE_MESSAGES = 4  # messages read ahead per connection (each up to the transport limit)
# Authentication back-off per peer address: a few free attempts (typos), then waits that double.
FREE_TOKEN_FAILURES = 5
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 60.0
MAX_TRACKED_PEERS = 10_000
SAMPLE_BYTES = 64            # what one node's time of one run costs while a profile is kept (generous)
CAPABILITIES = ["upload.resume", "profile.partial", "run", "calibrate", "cancel", "intermediates"]


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(P.DEFAULT_PORT)
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:7878") from None
    return host, number


@dataclass
class AgentConfig:
    host: str = "127.0.0.1"
    port: int = P.DEFAULT_PORT
    token: Optional[str] = None
    cache_dir: Optional[Path] = None
    limits: P.Limits = field(default_factory=P.Limits)
    name: Optional[str] = None
    advertise: bool = False
    team: Optional[str] = None  # Apple signing team for ModelRunner on connected iPhones (docs/iphone.md)

    def check(self) -> None:
        if self.token is not None and len(self.token) < P.MIN_TOKEN_CHARS:
            raise ValueError(f"the token has {len(self.token)} characters; use at least {P.MIN_TOKEN_CHARS} "
                             "(--generate-token makes one)")
        if not is_loopback(self.host) and not self.token:
            raise ValueError(f"--listen {self.host}:{self.port} accepts connections from other machines; "
                             "give a token (--token T or LAYERSCOPE_AGENT_TOKEN) that clients must present")
        if self.limits.max_model_bytes > self.limits.cache_bytes:
            raise ValueError("the model cache must be at least as large as the maximum model size")
        if self.limits.max_message_bytes < self.limits.chunk_bytes + P.CHUNK_HEADER_BYTES:
            raise ValueError("max message size must hold one upload chunk and its header")


@dataclass
class Job:
    request_id: str
    kind: str
    connection: "Connection"
    cancel: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)


class Connection:
    """State of one client connection; lives on the event loop."""

    def __init__(self, agent: "Agent", websocket):
        self.agent = agent
        self.websocket = websocket
        self.loop = asyncio.get_running_loop()
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.hello_done = False
        self.closed = False
        self.uploads: dict[str, tuple[str, Upload]] = {}   # upload id -> (request id, upload)
        self.session = None
        self.session_model: Optional[str] = None
        self.session_wire: dict = {}
        self.peer = "?"
        try:
            self.peer = "%s:%s" % websocket.remote_address[:2]
        except Exception:
            pass

    def send(self, message: dict) -> None:
        """Queue a message (event-loop thread only)."""
        if not self.closed:
            self.outbox.put_nowait(message)

    def send_threadsafe(self, message: dict) -> None:
        self.loop.call_soon_threadsafe(self.send, message)

    async def writer(self) -> None:
        while True:
            message = await self.outbox.get()
            if message is None:
                return
            try:
                await self.websocket.send(P.encode(message))
            except Exception:
                return

    def close_session(self) -> None:
        if self.session is not None:
            try:
                self.session.close()
            finally:
                if self.session_model:
                    self.agent.cache.unpin(self.session_model)
                self.session = None
                self.session_model = None


class Agent:
    def __init__(self, config: AgentConfig):
        config.check()
        self.config = config
        self.limits = config.limits
        cache_dir = config.cache_dir or default_cache_dir()
        self.cache = ModelCache(Path(cache_dir), self.limits.cache_bytes, self.limits.max_model_bytes)
        self.backends = default_backends(config.team)
        ort_backend = self.backends.get(P.BACKEND_ONNXRUNTIME)
        if ort_backend is not None:
            ort_backend.work_dir = self.cache.work_dir
            ort_backend.memory_budget_bytes = self.limits.load_memory_bytes
            # Loads make their session copies in processes forked from it (engine.targets.isolated)
            start_fork_server()
        self.auth_failures: dict[str, tuple[int, float]] = {}  # peer host -> (failures, refused until)
        self.job: Optional[Job] = None
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="agent-job")
        self.connections: set[Connection] = set()
        self.server = None
        self.port: Optional[int] = None
        self._advertisement = None

    # -- serving --------------------------------------------------------------------------

    async def start(self):
        from websockets.asyncio.server import serve
        # Until hello, frames are capped far below max_message_bytes; _handshake raises the cap to the
        # transport's hard limit once the client is authenticated.
        self.server = await serve(self.handle, self.config.host, self.config.port,
                                  max_size=P.PRE_HELLO_MAX_MESSAGE_BYTES, compression=None, origins=[None],
                                  ping_interval=20, ping_timeout=20, max_queue=INCOMING_QUEUE_MESSAGES,
                                  server_header=f"{AGENT_NAME}/{AGENT_VERSION}")
        sockets = list(self.server.sockets)
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        if self.config.advertise:
            from engine.bridge.discovery import advertise
            # zeroconf's sync API must not run on this event loop: register from a worker thread.
            self._advertisement = await asyncio.get_running_loop().run_in_executor(
                None, lambda: advertise(self.port, self.config.name or device_description()["name"],
                                        token_required=bool(self.config.token), host=self.config.host))
        return self.server

    async def stop(self):
        if self._advertisement is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._advertisement.close)
            except Exception:
                pass
        if self.job is not None:
            self.job.cancel.set()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.executor.shutdown(wait=False, cancel_futures=True)
        from engine.bridge.iphone import close_links
        close_links()  # ModelRunner sessions this agent launched on connected phones

    @staticmethod
    def log(text: str) -> None:
        """One line on stderr (refusals, shutdown): what an operator watching the agent needs."""
        print(f"layerscope agent: {text}", file=sys.stderr, flush=True)

    async def housekeeping(self):
        while True:
            await asyncio.sleep(5)
            await asyncio.get_running_loop().run_in_executor(None, self.cache.remove_leftovers,
                                                             self.limits.upload_expiry_s)
            for upload in self.cache.expire_idle_uploads(P.UPLOAD_IDLE_TIMEOUT_S):
                for connection in list(self.connections):
                    if upload.upload_id in connection.uploads:
                        request_id, _ = connection.uploads.pop(upload.upload_id)
                        connection.send(P.error_message(request_id, "unknown_upload",
                                                        "the upload was idle too long and is parked; begin it "
                                                        "again to resume where it stopped"))

    async def handle(self, websocket) -> None:
        from websockets.exceptions import ConnectionClosed
        connection = Connection(self, websocket)
        if len(self.connections) >= self.limits.max_connections:
            self.log(f"refused {connection.peer}: {len(self.connections)} connections open, the limit")
            await websocket.close(P.CLOSE_TRY_AGAIN_LATER, "too many connections")
            return
        self.connections.add(connection)
        writer = asyncio.create_task(connection.writer())
        try:
            try:
                accepted = await self._handshake(connection)
            except ConnectionClosed:
                raise
            except Exception as exc:  # a bug must not become a traceback and a 1011 close
                connection.send(P.error_message(None, "internal", f"{type(exc).__name__}: {exc}"))
                accepted = False
            if not accepted:
                return
            async for data in websocket:
                try:
                    if isinstance(data, (bytes, bytearray, memoryview)):
                        await self._on_binary(connection, bytes(data))
                    else:
                        await self._on_text(connection, data)
                except ProtocolError as exc:
                    connection.send(exc.to_message(getattr(exc, "request_id", None)))
                except Exception as exc:  # a bug must not take the server down
                    connection.send(P.error_message(None, "internal", f"{type(exc).__name__}: {P.clip(str(exc))}"))
        except ConnectionClosed:
            pass
        finally:
            connection.closed = True
            self.connections.discard(connection)
            for _, upload in connection.uploads.values():
                self.cache.park(upload)
            connection.uploads.clear()
            job = self.job
            if job is not None and job.connection is connection:
                job.cancel.set()  # the job's completion closes the session
            else:
                connection.close_session()
            connection.outbox.put_nowait(None)
            try:
                await asyncio.wait_for(writer, 1.0)
            except (asyncio.TimeoutError, Exception):
                writer.cancel()

    async def _handshake(self, connection: Connection) -> bool:
        """Wait for a valid hello; False when the connection must end."""
        deadline = time.monotonic() + P.HELLO_TIMEOUT_S
        websocket = connection.websocket
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                data = await asyncio.wait_for(websocket.recv(), remaining)
            except asyncio.TimeoutError:
                connection.send(P.error_message(None, "hello_required", "no hello within "
                                                f"{P.HELLO_TIMEOUT_S:.0f} s"))
                await asyncio.sleep(0.05)
                await websocket.close(P.CLOSE_HELLO_TIMEOUT, "no hello")
                return False
            if not isinstance(data, str):
                connection.send(P.error_message(None, "hello_required", "the first message must be a hello "
                                                "(JSON text), not binary"))
                continue
            try:
                self._check_size(data)
                message = P.decode(data)
            except ProtocolError as exc:
                connection.send(exc.to_message(_peek_id(data) if exc.code != "message_too_large" else None))
                continue
            if message["type"] != "hello":
                connection.send(P.error_message(message["id"], "hello_required",
                                                "the first message on a connection must be hello"))
                continue
            offered = [P.clip(p, 40) for p in message["protocols"][:10] if isinstance(p, str)]
            if P.PROTOCOL not in offered:
                connection.send(P.error_message(message["id"], "unsupported_version",
                                                f"this agent speaks {', '.join(P.SUPPORTED_PROTOCOLS)}; the "
                                                f"client offered {', '.join(offered) or 'nothing'}",
                                                supported=list(P.SUPPORTED_PROTOCOLS)))
                await asyncio.sleep(0.05)
                await websocket.close(P.CLOSE_UNSUPPORTED_VERSION, "unsupported version")
                return False
            if self.config.token is not None and not self._token_accepted(connection, message):
                await asyncio.sleep(0.05)
                await websocket.close(P.CLOSE_UNAUTHORIZED, "unauthorized")
                return False
            connection.hello_done = True
            # Authenticated: from now on messages up to the transport limit are read (an error reply
            # for those above max_message_bytes, a 1009 close beyond).
            websocket.protocol.max_message_size = self.limits.max_message_bytes * P.TRANSPORT_HARD_LIMIT_FACTOR
            connection.send({"type": "welcome", "id": message["id"], "protocol": P.PROTOCOL,
                             "agent": {"name": AGENT_NAME, "version": AGENT_VERSION,
                                       "device": self.config.name or device_description()["name"]},
                             "limits": self.limits.to_dict(), "capabilities": CAPABILITIES,
                             "token_required": self.config.token is not None})
            return True

    def _token_accepted(self, connection: Connection, message: dict) -> bool:
        """Check hello's token in constant time, with a back-off per peer address; log every refusal."""
        host = connection.peer.rsplit(":", 1)[0]
        now = time.monotonic()
        failures, refused_until = self.auth_failures.get(host, (0, 0.0))
        if now < refused_until:
            wait = refused_until - now
            connection.send(P.error_message(message["id"], "unauthorized",
                                            f"{failures} failed attempts from {host}: wait {wait:.1f} s before "
                                            "trying again", retry_after_s=round(wait, 3)))
            self.log(f"refused {connection.peer}: {failures} failed token attempts, waiting {wait:.1f} s "
                     "(not checked)")
            return False
        given = message.get("token") or ""
        # surrogatepass: a token with a lone surrogate ("\ud800") is simply wrong, never an exception.
        if hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self.config.token.encode("utf-8")):
            self.auth_failures.pop(host, None)
            return True
        failures += 1
        delay = 0.0 if failures < FREE_TOKEN_FAILURES else min(
            MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (failures - FREE_TOKEN_FAILURES))
        if len(self.auth_failures) >= MAX_TRACKED_PEERS and host not in self.auth_failures:
            self.auth_failures.pop(next(iter(self.auth_failures)))
        self.auth_failures[host] = (failures, now + delay)
        extra = {"retry_after_s": delay} if delay else {}
        connection.send(P.error_message(message["id"], "unauthorized", "wrong or missing token: give the token the "
                                        "agent was started with (--token, --token-file or LAYERSCOPE_AGENT_TOKEN)",
                                        **extra))
        self.log(f"refused {connection.peer}: {'missing' if not given else 'wrong'} token (failure {failures} "
                 f"from {host}" + (f"; next attempt in {delay:.1f} s)" if delay else ")"))
        return False

    def _check_size(self, data) -> None:
        size = len(data) if isinstance(data, (bytes, bytearray)) else (
            len(data) if len(data) * 4 <= self.limits.max_message_bytes else len(data.encode("utf-8")))
        if size > self.limits.max_message_bytes:
            raise ProtocolError("message_too_large", f"a message of {size} bytes exceeds this agent's "
                                                     f"limit of {self.limits.max_message_bytes} bytes",
                                max_message_bytes=self.limits.max_message_bytes)

    # -- messages -------------------------------------------------------------------------

    async def _on_text(self, connection: Connection, text: str) -> None:
        self._check_size(text)
        try:
            message = P.decode(text)
        except ProtocolError as exc:
            exc.request_id = _peek_id(text)  # answer with the id when there is one to read
            raise
        request_id = message["id"]
        handler = getattr(self, f"_on_{message['type']}", None)
        try:
            await handler(connection, message)
        except ProtocolError as exc:
            connection.send(exc.to_message(request_id))

    async def _on_hello(self, connection, message) -> None:
        connection.send(P.error_message(message["id"], "bad_message", "hello was already done on this connection"))

    async def _on_ping(self, connection, message) -> None:
        connection.send({"type": "pong", "id": message["id"], "time": time.time()})

    async def _on_describe(self, connection, message) -> None:
        # Off the event loop: on a Mac the coreml backend asks Xcode's devicectl for the phones (~1 s).
        backends = await asyncio.get_running_loop().run_in_executor(
            None, lambda: [backend.info() for backend in self.backends.values()])
        connection.send({"type": "description", "id": message["id"],
                         "device": device_description(self.config.name), "backends": backends,
                         "protocol": P.PROTOCOL, "agent": {"name": AGENT_NAME, "version": AGENT_VERSION},
                         "busy": self.job is not None})

    async def _on_upload_begin(self, connection, message) -> None:
        sha256 = message["sha256"].lower()
        loop = asyncio.get_running_loop()
        try:  # hashing a large entry takes a while: off the event loop
            cached = await loop.run_in_executor(None, self.cache.verified, sha256)
        except ProtocolError as exc:  # damaged and evicted: take a fresh upload instead
            self.log(f"cache: {exc.message}")
            cached = None
        if cached is not None:
            connection.send({"type": "upload_done", "id": message["id"], "sha256": sha256, "cached": True,
                             "size": cached.size, "format": cached.format, **_layer_map_field(cached)})
            return
        upload_id = P.new_upload_id()
        # Resuming hashes the bytes already received: off the event loop as well.
        upload = await loop.run_in_executor(None, self.cache.begin_upload, upload_id, sha256, message["size"],
                                            P.clip(message.get("name", ""), 255), message.get("format", ""))
        connection.uploads[upload_id] = (message["id"], upload)
        if upload.received == upload.size:
            await self._finish_upload(connection, message["id"], upload)
            return
        connection.send({"type": "upload_ready", "id": message["id"], "upload": upload_id,
                         "offset": upload.received, "chunk_bytes": self.limits.chunk_bytes})

    async def _on_binary(self, connection: Connection, data: bytes) -> None:
        self._check_size(data)
        upload_id, offset, payload = P.unpack_chunk(data)
        entry = connection.uploads.get(upload_id)
        if entry is None:
            raise ProtocolError("unknown_upload", f"chunk for upload {upload_id}, which this connection has not "
                                                  "begun (or which was parked); send upload_begin first")
        request_id, upload = entry
        try:
            if len(payload) > self.limits.chunk_bytes:
                raise ProtocolError("message_too_large", f"a chunk carries at most {self.limits.chunk_bytes} "
                                                         "bytes of model")
            complete = self.cache.write_chunk(upload, offset, payload)
        except ProtocolError as exc:
            connection.send(exc.to_message(request_id))
            return
        if complete:
            await self._finish_upload(connection, request_id, upload)

    async def _finish_upload(self, connection, request_id: str, upload: Upload) -> None:
        connection.uploads.pop(upload.upload_id, None)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:  # unpacking an archive can take a while: off the event loop
            cached = await loop.run_in_executor(None, self.cache.finish_upload, upload)
        except ProtocolError as exc:
            connection.send(exc.to_message(request_id))
            return
        connection.send({"type": "upload_done", "id": request_id, "sha256": cached.sha256, "cached": False,
                         "size": cached.size, "format": cached.format,
                         "seconds": time.monotonic() - upload.started,
                         "finish_ms": (time.perf_counter() - started) * 1000.0, **_layer_map_field(cached)})

    # -- jobs -----------------------------------------------------------------------------

    def _start_job(self, connection: Connection, request_id: str, kind: str,
                   work: Callable[[Job], Optional[dict]], accepted: bool = False) -> None:
        """Run `work(job)` in a worker thread; its return value is the reply.  One job at a time."""
        if self.job is not None:
            other = "this connection" if self.job.connection is connection else "another client"
            connection.send({"type": "busy", "id": request_id,
                             "message": f"the agent is busy: {other} is running a {self.job.kind} job "
                                        f"(for {time.monotonic() - self.job.started:.0f} s); try again when it "
                                        "ends",
                             "job_kind": self.job.kind})
            return
        job = Job(request_id, kind, connection)
        self.job = job
        if accepted:  # queued before anything the worker sends
            connection.send({"type": "accepted", "id": request_id, "job": request_id})
        loop = asyncio.get_running_loop()

        def run() -> Optional[dict]:
            try:
                return work(job)
            except ProtocolError as exc:
                return exc.to_message(request_id)
            except BackendUnavailable as exc:
                return P.error_message(request_id, "backend_unavailable", str(exc))
            except (TargetError, ModelLoadError) as exc:
                code = "load_failed" if kind == "load" else "profile_failed" if kind == "profile" else "bad_settings"
                return P.error_message(request_id, code, str(exc))
            except MemoryError:
                return P.error_message(request_id, "load_failed" if kind == "load" else "internal",
                                       "the agent ran out of memory for this request")
            except Exception as exc:
                return P.error_message(request_id, "internal", f"{type(exc).__name__}: {P.clip(str(exc))}")

        async def finish() -> None:
            try:
                reply = await loop.run_in_executor(self.executor, run)
            finally:
                self.job = None
                if connection.closed:
                    connection.close_session()
            if reply is not None:
                connection.send(reply)

        asyncio.create_task(finish())

    @staticmethod
    def _check_settings(data: dict):
        """Settings from the wire, every field checked (on the event loop: cheap, before any job)."""
        settings = P.settings_from_wire(data or {})
        inputs = settings.inputs
        if inputs not in ("random", "zeros") and not (inputs.startswith("upload:")
                                                      and len(inputs) == len("upload:") + 64):
            raise P.bad_setting("inputs", "must be 'random', 'zeros' or 'upload:<sha256 of an uploaded .npz>'")
        return settings

    def _check_sample_memory(self, session, runs: int) -> None:
        """A profile keeps one time per node per run: refuse more runs than the load memory budget holds."""
        analysis = getattr(getattr(session, "target", None), "analysis", None)
        nodes = max(1, len(analysis.nodes)) if analysis is not None else 1
        most_runs = self.limits.load_memory_bytes // (SAMPLE_BYTES * nodes)
        if runs > most_runs:
            raise P.bad_setting("runs", f"{runs} runs of {nodes} nodes would keep more timings than this agent's "
                                        f"memory budget holds; at most {most_runs} runs")

    def _with_uploaded_inputs(self, settings):
        """`inputs: upload:<sha256>` resolved to the cached .npz, verified (in the job's thread: it hashes)."""
        if not settings.inputs.startswith("upload:"):
            return settings
        sha256 = settings.inputs[len("upload:"):].lower()
        cached = self.cache.verified(sha256)
        if cached is None or cached.format != "npz":
            raise ProtocolError("unknown_model", f"inputs upload:{sha256[:12]}...: no uploaded .npz with this "
                                                 "sha256; upload it first")
        return settings.replace(inputs=str(cached.path))
    async def _on_load(self, connection, message) -> None:
        backend_name = message.get("backend") or P.BACKEND_ONNXRUNTIME
        backend = self.backends.get(backend_name)
        if backend is None:
            raise ProtocolError("bad_settings", f"unknown backend {P.clip(backend_name, 40)!r}; this agent has "
                                                f"{', '.join(self.backends)}")
        sha256 = message["model"].lower()
        if self.cache.get(sha256) is None:
            raise ProtocolError("unknown_model", f"no model {P.clip(sha256, 64)} in the agent's cache: upload it "
                                                 "first")
        wire = dict(message.get("settings") or {})
        checked = self._check_settings(wire)

        def work(job: Job) -> dict:
            model = self.cache.verified(sha256)  # re-hashed unless unchanged since the last check
            if model is None:
                raise ProtocolError("unknown_model", f"no model {sha256} in the agent's cache: upload it first")
            settings = self._with_uploaded_inputs(checked)
            self.cache.pin(sha256)
            try:
                session = _open_session(backend, model, message.get("compute_unit"), settings,
                                        message.get("device"))
            except BaseException:
                self.cache.unpin(sha256)
                raise
            if connection.closed:
                session.close()
                self.cache.unpin(sha256)
                return None
            connection.close_session()
            connection.session, connection.session_model, connection.session_wire = session, sha256, wire
            inputs, outputs = session.io_description()
            reply = {"type": "loaded", "id": job.request_id, "backend": backend.name,
                     "compute_unit": session.compute_unit,
                     "load_ms": TimingStats.from_samples([session.load_ms]).to_json_dict(),
                     "inputs": inputs, "outputs": outputs}
            compiled = getattr(session, "compiled_load_ms", None)
            if compiled is not None:
                reply["compiled_load_ms"] = TimingStats.from_samples([compiled]).to_json_dict()
            return reply

        self._start_job(connection, message["id"], "load", work)

    async def _on_profile(self, connection, message) -> None:
        if connection.session is None:
            raise ProtocolError("not_loaded", "load a model on this connection before profiling")
        granularity = message.get("granularity") or "layer"
        if granularity not in P.GRANULARITIES:
            raise ProtocolError("bad_settings", f"granularity must be one of {', '.join(P.GRANULARITIES)}")
        wire = dict(connection.session_wire)
        wire.update(message.get("settings") or {})
        checked = self._check_settings(wire)
        partial_every = message.get("partial_every")
        if partial_every is not None and not 0 <= partial_every <= P.SETTINGS_RANGES["runs"][1]:
            raise P.bad_setting("partial_every", f"must be from 0 to {P.SETTINGS_RANGES['runs'][1]}")
        session = connection.session
        self._check_sample_memory(session, checked.runs + checked.warmup)

        def work(job: Job) -> dict:
            settings = self._with_uploaded_inputs(checked)
            last_progress = [0.0]

            def progress(done: int, total: int, phase: str, text: str) -> None:
                now = time.monotonic()
                if now - last_progress[0] < PROGRESS_INTERVAL_S and done < total and phase == "run":
                    return
                last_progress[0] = now
                connection.send_threadsafe({"type": "progress", "id": job.request_id, "done": done,
                                            "total": total, "phase": phase, "message": text})

            def partial(profile) -> None:
                connection.send_threadsafe({"type": "partial", "id": job.request_id,
                                            "runs": profile.runs_completed, "profile": profile.to_json_dict()})

            started = time.perf_counter()
            profile = session.profile(settings, granularity, partial_every, progress, partial, job.cancel)
            wall_ms = (time.perf_counter() - started) * 1000.0
            return {"type": "result", "id": job.request_id, "profile": profile.to_json_dict(),
                    "agent_ms": TimingStats.from_samples([wall_ms]).to_json_dict()}

        self._start_job(connection, message["id"], "profile", work, accepted=True)

    async def _on_run(self, connection, message) -> None:
        if connection.session is None:
            raise ProtocolError("not_loaded", "load a model on this connection before running it")
        encoded = message.get("inputs_npz_b64")
        session = connection.session
        limit = self.limits.max_message_bytes // 2

        def work(job: Job) -> dict:
            # Decoded in the job's thread, never on the event loop; the arrays may take at most
            # max_message_bytes (what one uncompressed message could carry), checked from the
            # archive's declared sizes and the array headers before any array is read.
            feed = _decode_npz_inputs(encoded, self.limits.max_message_bytes) if encoded else None
            start = time.perf_counter()
            outputs = session.run(feed)
            elapsed = (time.perf_counter() - start) * 1000.0
            buffer = io.BytesIO()
            np.savez(buffer, **{name: np.asarray(value) for name, value in outputs.items()})
            described = [{"name": name, "shape": list(np.shape(value)), "dtype": str(np.asarray(value).dtype)}
                         for name, value in outputs.items()]
            reply = {"type": "run_result", "id": job.request_id, "outputs": described,
                     "run_ms": TimingStats.from_samples([elapsed]).to_json_dict()}
            if buffer.tell() * 4 // 3 < limit:
                reply["outputs_npz_b64"] = base64.b64encode(buffer.getvalue()).decode("ascii")
            return reply

        self._start_job(connection, message["id"], "run", work)

    async def _on_calibrate(self, connection, message) -> None:
        backend = self.backends[P.BACKEND_ONNXRUNTIME]
        sizes = message.get("sizes")
        if sizes is not None and (len(sizes) < 2 or not all(isinstance(s, int) and 0 < s <= 256 * P.MiB
                                                             for s in sizes)):
            raise ProtocolError("bad_settings", "sizes: at least two positive byte counts up to 256 MiB")
        unit = message.get("compute_unit")
        resolved = [backend.resolve_unit(unit)] if unit else [(u["name"], u["provider"])
                                                              for u in backend.compute_units()]
        repeats = message.get("repeats", 5)
        if not 1 <= repeats <= 50:
            raise P.bad_setting("repeats", "must be from 1 to 50")

        def work(job: Job) -> dict:
            units = {}
            for name, provider in resolved:
                kwargs = {"sizes": tuple(sizes)} if sizes else {}
                units[name] = backend.calibration(name, provider, cancel=job.cancel, repeats=repeats,
                                                  refresh=True, **kwargs).to_json_dict()
            return {"type": "calibration", "id": job.request_id, "units": units, "backend": backend.name}

        self._start_job(connection, message["id"], "calibrate", work)

    async def _on_intermediates(self, connection, message) -> None:
        """Chosen intermediate tensors of the loaded model, one run (engine.bridge.intermediates)."""
        from engine.bridge.intermediates import intermediates_job
        if connection.session is None:
            raise ProtocolError("not_loaded", "load a model on this connection before asking for its tensors")
        work = intermediates_job(connection.session, message, self.limits.max_message_bytes // 2)
        self._start_job(connection, message["id"], "intermediates", work)

    async def _on_cancel(self, connection, message) -> None:
        job = self.job
        if job is None or job.connection is not connection or job.request_id != message["job"]:
            raise ProtocolError("no_job", f"no running job {P.clip(message['job'], 80)!r} on this connection")
        job.cancel.set()
        connection.send({"type": "cancelling", "id": message["id"], "job": job.request_id})


def _open_session(backend, model, compute_unit, settings, device: Optional[str]):
    """backend.open, with the `device` of a load (an iPhone of this Mac) for the backends that have devices."""
    if not device:
        return backend.open(model, compute_unit, settings)
    if backend.name != P.BACKEND_COREML:
        raise ProtocolError("bad_settings", f"'device' names an iPhone or iPad, which runs Core ML: load with "
                                            f"backend 'coreml', not {backend.name!r}")
    return backend.open(model, compute_unit, settings, device=device)


def _layer_map_field(cached) -> dict:
    """upload_done's `layer_map` key: for packages, whether their layer map came with them."""
    return {"layer_map": cached.layer_map} if cached.format == "mlpackage" else {}


def _peek_id(text: str) -> Optional[str]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    request_id = value.get("id") if isinstance(value, dict) else None
    return request_id if isinstance(request_id, str) and len(request_id) <= P.MAX_ID_CHARS else None


def _decode_npz_inputs(encoded: str, max_bytes: int) -> dict:
    """run's inputs_npz_b64 as arrays, bounded by `max_bytes`.  Raises ProtocolError(bad_message)."""
    from engine.targets.cpu import read_npz
    try:
        return read_npz(base64.b64decode(encoded, validate=True), max_bytes)
    except Exception as exc:
        raise ProtocolError("bad_message", f"inputs_npz_b64 is not a usable base64 .npz: {P.clip(str(exc))}") \
            from None


# ============================================================================ entry point

def run_agent(config: AgentConfig, ready: Optional[Callable[[str], None]] = None,
              announce_token: bool = False) -> int:
    """Serve until SIGINT/SIGTERM.  Prints the listening address (one line) once ready, then the token when
    `announce_token` (a generated one the user has to learn)."""
    agent = Agent(config)

    async def main() -> None:
        await agent.start()
        host = config.host if ":" not in config.host else f"[{config.host}]"
        line = (f"layerscope agent: listening on ws://{host}:{agent.port} ({P.PROTOCOL}; "
                f"{'token required' if config.token else 'no token, loopback only'}; cache {agent.cache.root})")
        say = ready or (lambda text: print(text, flush=True))
        say(line)
        if announce_token:
            say(f"layerscope agent: token {config.token} (clients: LAYERSCOPE_AGENT_TOKEN, or ?token= in the "
                "ws:// address)")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            stop.set()
            # A job stuck in native code (a huge load) does not see its cancel flag, and the
            # interpreter would wait for its thread at exit: leave anyway after a grace period.
            watchdog = threading.Timer(STOP_GRACE_S, _abandon, (agent,))
            watchdog.daemon = True
            watchdog.start()

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal)
            except (NotImplementedError, RuntimeError):
                pass
        housekeeping = asyncio.create_task(agent.housekeeping())
        await stop.wait()
        housekeeping.cancel()
        await agent.stop()
        job = agent.job
        if job is not None:
            agent.log(f"stopping: waiting up to {STOP_GRACE_S:.0f} s for the {job.kind} job to end")

    asyncio.run(main())
    return 0


def _abandon(agent: Agent) -> None:
    """The last resort after a stop signal: remove this process's temporary copies and exit now."""
    agent.log(f"stopping: a job did not end within {STOP_GRACE_S:.0f} s; exiting without it")
    agent.cache.remove_own_temporaries()
    sys.stderr.flush()
    os._exit(0)


def read_token(args) -> tuple[Optional[str], bool]:
    """(token, generated) from --generate-token, --token-file, --token or $LAYERSCOPE_AGENT_TOKEN, in that order.

    A token file holds the token on its first line; it keeps the token out of `ps` and of the shell history.
    """
    if getattr(args, "generate_token", False):
        return secrets.token_urlsafe(24), True
    path = getattr(args, "token_file", None)
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--token-file {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
        lines = text.strip().splitlines()
        if not lines or not lines[0].strip():
            raise ValueError(f"--token-file {path} is empty")
        return lines[0].strip(), False
    return args.token or os.environ.get("LAYERSCOPE_AGENT_TOKEN") or None, False


def config_from_args(args) -> AgentConfig:
    host, port = parse_listen(args.listen)
    token, _ = read_token(args)
    max_model = int(args.max_model_mb * P.MiB)
    cache = int(max(args.cache_mb * P.MiB, max_model))
    memory = getattr(args, "load_memory_mb", None)
    expiry = getattr(args, "upload_expiry_s", None)
    limits = P.Limits(max_model_bytes=max_model, cache_bytes=cache,
                      load_memory_bytes=int(memory * P.MiB) if memory else P.DEFAULT_LOAD_MEMORY_BYTES,
                      upload_expiry_s=float(expiry) if expiry is not None else P.DEFAULT_UPLOAD_EXPIRY_S)
    return AgentConfig(host=host, port=port, token=token,
                       cache_dir=Path(args.cache_dir) if args.cache_dir else None, limits=limits,
                       name=args.name, advertise=args.advertise, team=getattr(args, "team", None))


if __name__ == "__main__":  # python -m engine.bridge.agent: the same as `layerscope agent`
    from engine.cli import main
    sys.exit(main(["agent", *sys.argv[1:]]))
