"""The LayerScope bridge protocol, ``layerscope-bridge/1`` (docs/bridge-protocol.md is the spec).

This module is the single place where the wire format lives: message types
and their fields, validation, error codes, the binary upload-chunk header,
and the default limits.  Both the agent (engine.bridge.agent) and the desktop
client (engine.bridge.client) use it, so they cannot drift apart; an agent in
another language follows the document instead.

Invariants:

- A control message is one WebSocket *text* message holding one JSON object
  with a string ``type`` and a string ``id``.  Replies, progress and results
  for a request carry the request's ``id``.
- Model bytes travel only in *binary* messages, each starting with the
  28-byte chunk header (`pack_chunk_header`).
- Unknown keys are ignored by both sides (keys may be added within version 1);
  missing required keys or wrong types are a ``bad_message`` error.

Pure Python: never import Qt (or websockets) here.
"""
from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Optional

PROTOCOL = "layerscope-bridge/1"
SUPPORTED_PROTOCOLS = (PROTOCOL,)
DEFAULT_PORT = 7878
MDNS_SERVICE_TYPE = "_layerscope._tcp.local."

# ---------------------------------------------------------------------------- limits (defaults)

MiB = 1024 * 1024
DEFAULT_CHUNK_BYTES = 1 * MiB              # payload bytes per binary upload message
DEFAULT_MAX_MESSAGE_BYTES = 4 * MiB        # larger text/binary messages get an error reply
TRANSPORT_HARD_LIMIT_FACTOR = 4            # beyond 4x the limit the transport closes (1009)
DEFAULT_MAX_MODEL_BYTES = 512 * MiB
DEFAULT_CACHE_BYTES = 2048 * MiB

# Timeouts, seconds.  Every wait on either side has one.
HELLO_TIMEOUT_S = 10.0          # agent: a connection must say hello within this
REPLY_TIMEOUT_S = 30.0          # client: a request answered by a single reply
LOAD_TIMEOUT_S = 600.0          # client: load/compile (Core ML compiles can be slow)
STALL_TIMEOUT_S = 120.0         # client: a running job must send something (progress) this often
CANCEL_GRACE_S = 30.0           # client: after cancel, the final result must arrive within this
UPLOAD_IDLE_TIMEOUT_S = 60.0    # agent: an upload with no chunk for this long is parked (resumable)
CONNECT_TIMEOUT_S = 10.0        # client: TCP + WebSocket handshake

# ---------------------------------------------------------------------------- close codes

CLOSE_UNAUTHORIZED = 4401
CLOSE_HELLO_TIMEOUT = 4408
CLOSE_UNSUPPORTED_VERSION = 4426
CLOSE_AGENT_SHUTDOWN = 4503

# ---------------------------------------------------------------------------- error codes

ERROR_CODES = {
    "bad_message": "the message is not valid JSON, or a field is missing or has the wrong type",
    "unknown_type": "the message type is not part of the protocol version in use",
    "hello_required": "the first message on a connection must be hello",
    "unauthorized": "the token is missing or wrong",
    "unsupported_version": "no protocol version in common",
    "message_too_large": "the message exceeds max_message_bytes",
    "model_too_large": "the model exceeds max_model_bytes",
    "unknown_upload": "a chunk names an upload this connection has not begun",
    "bad_offset": "a chunk does not start where the agent's copy ends (field 'expected' says where)",
    "checksum_mismatch": "the bytes received do not have the announced sha256; the upload is discarded",
    "upload_in_progress": "another connection is uploading the same model right now",
    "unsafe_archive": "an uploaded archive has absolute paths, '..' or links leaving its folder",
    "bad_archive": "an uploaded archive cannot be read",
    "unknown_model": "no model with this sha256 is in the agent's cache",
    "backend_unavailable": "the backend does not run on this device (the message says why)",
    "bad_settings": "settings the backend cannot use (unknown compute unit, wrong input shape, ...)",
    "load_failed": "the backend could not load or compile the model",
    "not_loaded": "profile/run before a successful load on this connection",
    "profile_failed": "the profile stopped with an error before any run finished",
    "no_job": "cancel names no running job of this connection",
    "internal": "a bug in the agent; the message has details",
}

# ---------------------------------------------------------------------------- message schemas

# type -> {field: (allowed python types, required)}.  Only what validation needs;
# docs/bridge-protocol.md has the full meaning of every field.
_STR, _INT, _NUM, _BOOL, _DICT, _LIST = (str,), (int,), (int, float), (bool,), (dict,), (list,)
_OPT_STR = (str, type(None))

CLIENT_MESSAGES: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "hello": {"protocols": (_LIST, True), "client": (_STR, False), "token": (_OPT_STR, False)},
    "describe": {},
    "upload_begin": {"sha256": (_STR, True), "size": (_INT, True), "name": (_STR, False),
                     "format": (_STR, False)},
    "load": {"model": (_STR, True), "backend": (_STR, False), "compute_unit": (_OPT_STR, False),
             "settings": (_DICT, False), "device": (_OPT_STR, False)},
    "profile": {"settings": (_DICT, False), "granularity": (_STR, False), "partial_every": (_INT, False)},
    "run": {"inputs_npz_b64": (_OPT_STR, False)},
    "calibrate": {"compute_unit": (_OPT_STR, False), "sizes": (_LIST, False), "repeats": (_INT, False)},
    "cancel": {"job": (_STR, True)},
    "ping": {},
}

AGENT_MESSAGES: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "welcome": {"protocol": (_STR, True), "agent": (_DICT, True), "limits": (_DICT, True),
                "capabilities": (_LIST, False)},
    "description": {"device": (_DICT, True), "backends": (_LIST, True)},
    "upload_ready": {"upload": (_STR, True), "offset": (_INT, True), "chunk_bytes": (_INT, True)},
    "upload_done": {"sha256": (_STR, True), "cached": (_BOOL, True), "size": (_INT, False)},
    "loaded": {"backend": (_STR, True), "compute_unit": (_STR, True), "load_ms": (_DICT, True),
               "inputs": (_LIST, False), "outputs": (_LIST, False)},
    "accepted": {"job": (_STR, True)},
    "progress": {"done": (_INT, True), "total": (_INT, True), "phase": (_STR, False),
                 "message": (_STR, False)},
    "partial": {"runs": (_INT, True), "profile": (_DICT, True)},
    "result": {"profile": (_DICT, True)},
    "run_result": {"outputs": (_LIST, True)},
    "calibration": {"units": (_DICT, True)},
    "cancelling": {"job": (_STR, True)},
    "busy": {"message": (_STR, True)},
    "pong": {},
    "error": {"code": (_STR, True), "message": (_STR, True)},
}

GRANULARITIES = ("model", "segment", "layer")
BACKEND_ONNXRUNTIME, BACKEND_COREML = "onnxruntime", "coreml"
UPLOAD_FORMATS = ("onnx", "mlmodel", "mlpackage-zip", "mlpackage-tar", "npz", "file")


class ProtocolError(Exception):
    """A message that breaks the protocol.  `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str, **extra: Any):
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    def to_message(self, request_id: Optional[str]) -> dict:
        return error_message(request_id, self.code, self.message, **self.extra)


def error_message(request_id: Optional[str], code: str, message: str, **extra: Any) -> dict:
    return {"type": "error", "id": request_id, "code": code, "message": message, **extra}


def encode(message: Mapping[str, Any]) -> str:
    """One JSON text message.  NaN/Infinity are not JSON: refuse them here, not on the other side."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def decode(text: str, schemas: Mapping[str, Mapping] = CLIENT_MESSAGES) -> dict:
    """Parse and validate one text message.  Raises ProtocolError (bad_message / unknown_type)."""
    try:
        message = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_message", f"not JSON: {exc}") from None
    validate(message, schemas)
    return message


def validate(message: Any, schemas: Mapping[str, Mapping] = CLIENT_MESSAGES) -> None:
    if not isinstance(message, dict):
        raise ProtocolError("bad_message", "a message must be a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "the message has no string 'type'")
    request_id = message.get("id")
    # Agent errors about an unparseable message may carry id null.
    if not isinstance(request_id, str) and not (kind == "error" and request_id is None):
        raise ProtocolError("bad_message", f"'{kind}' message has no string 'id'")
    if kind not in schemas:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r} in {PROTOCOL}; "
                                            f"known: {', '.join(sorted(schemas))}")
    for name, (types, required) in schemas[kind].items():
        if name not in message:
            if required:
                raise ProtocolError("bad_message", f"'{kind}' message lacks field '{name}'")
            continue
        value = message[name]
        # bool is an int in Python; an int field must not accept true/false.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = "/".join("null" if t is type(None) else t.__name__ for t in types)
            raise ProtocolError("bad_message", f"'{kind}'.{name} must be {expected}, got "
                                               f"{type(value).__name__}")


# ---------------------------------------------------------------------------- binary chunks

CHUNK_MAGIC = b"LSU1"
_CHUNK_HEADER = struct.Struct(">4s16sQ")   # magic, upload id (16 raw bytes), offset (uint64 BE)
CHUNK_HEADER_BYTES = _CHUNK_HEADER.size   # 28


def new_upload_id() -> str:
    return uuid.uuid4().hex


def pack_chunk_header(upload_id: str, offset: int) -> bytes:
    return _CHUNK_HEADER.pack(CHUNK_MAGIC, bytes.fromhex(upload_id), offset)


def unpack_chunk(data: bytes) -> tuple[str, int, memoryview]:
    """(upload id hex, offset, payload view) of one binary message.  Raises ProtocolError."""
    if len(data) < CHUNK_HEADER_BYTES:
        raise ProtocolError("bad_message", f"binary message of {len(data)} bytes is shorter than the "
                                           f"{CHUNK_HEADER_BYTES}-byte chunk header")
    magic, raw_id, offset = _CHUNK_HEADER.unpack_from(data, 0)
    if magic != CHUNK_MAGIC:
        raise ProtocolError("bad_message", f"binary message does not start with {CHUNK_MAGIC!r}")
    return raw_id.hex(), offset, memoryview(data)[CHUNK_HEADER_BYTES:]


# ---------------------------------------------------------------------------- settings

_SETTINGS_KEYS = {"mode", "runs", "warmup", "threads", "inputs", "seed", "input_shapes", "size"}


def settings_from_wire(data: Mapping[str, Any]):
    """ProfileSettings from the wire form (ProfileSettings.to_dict).  Raises ProtocolError(bad_settings)."""
    from engine.targets.settings import ProfileSettings, TargetError
    if not isinstance(data, Mapping):
        raise ProtocolError("bad_settings", "settings must be an object")
    unknown = set(data) - _SETTINGS_KEYS
    kwargs = {k: v for k, v in data.items() if k in _SETTINGS_KEYS and v is not None}
    try:
        if "size" in kwargs:
            kwargs["size"] = tuple(int(s) for s in kwargs["size"])
        for key in ("runs", "warmup", "threads", "seed"):
            if key in kwargs and (isinstance(kwargs[key], bool) or not isinstance(kwargs[key], int)):
                raise TargetError(f"{key} must be an integer, got {kwargs[key]!r}")
        settings = ProfileSettings(**kwargs)
    except (TargetError, TypeError, ValueError) as exc:
        raise ProtocolError("bad_settings", f"settings: {exc}") from None
    del unknown  # ignored on purpose: keys may be added within version 1
    return settings


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    cache_bytes: int = DEFAULT_CACHE_BYTES

    def to_dict(self) -> dict:
        return {"max_message_bytes": self.max_message_bytes, "max_model_bytes": self.max_model_bytes,
                "chunk_bytes": self.chunk_bytes, "cache_bytes": self.cache_bytes,
                "hello_timeout_s": HELLO_TIMEOUT_S, "upload_idle_timeout_s": UPLOAD_IDLE_TIMEOUT_S}
