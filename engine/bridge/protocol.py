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
# Hostile-input bounds (docs/bridge-protocol.md, "Limits an agent enforces").
PRE_HELLO_MAX_MESSAGE_BYTES = 64 * 1024    # before hello: a hello is a few hundred bytes; no frame larger
DEFAULT_MAX_CONNECTIONS = 16               # further connections are closed at once (1013, try again later)
DEFAULT_LOAD_MEMORY_BYTES = 4096 * MiB     # tensors a load may create (constant folding + activations)
DEFAULT_UPLOAD_EXPIRY_S = 3600.0           # a parked partial upload is deleted after this long untouched
MIN_TOKEN_CHARS = 16                       # shorter tokens are refused when the agent starts
MAX_ID_CHARS = 128                         # request ids longer than this are refused (they are echoed)
ECHO_CHARS = 200                           # untrusted text quoted in a reply is cut to this
MAX_ERROR_MESSAGE_CHARS = 1000             # no error message is longer than this

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
CLOSE_TRY_AGAIN_LATER = 1013    # the connection cap is reached

# ---------------------------------------------------------------------------- error codes

ERROR_CODES = {
    "bad_message": "the message is not valid JSON, or a field is missing or has the wrong type",
    "unknown_type": "the message type is not part of the protocol version in use",
    "hello_required": "the first message on a connection must be hello",
    "unauthorized": "the token is missing or wrong, or this address failed too often and must wait "
                    "(field 'retry_after_s')",
    "unsupported_version": "no protocol version in common",
    "message_too_large": "the message exceeds max_message_bytes",
    "model_too_large": "the model exceeds max_model_bytes",
    "unknown_upload": "a chunk names an upload this connection has not begun",
    "bad_offset": "a chunk does not start where the agent's copy ends (field 'expected' says where)",
    "checksum_mismatch": "the bytes received do not have the announced sha256; the upload is discarded",
    "upload_in_progress": "another connection is uploading the same model right now",
    "unsafe_archive": "an uploaded archive has absolute paths, '..' or links leaving its folder",
    "bad_archive": "an uploaded archive cannot be read",
    "unknown_model": "no model with this sha256 is in the agent's cache (or its cached copy was damaged and "
                     "removed): upload it again",
    "backend_unavailable": "the backend does not run on this device (the message says why)",
    "bad_settings": "settings the backend cannot use (unknown compute unit, wrong input shape, ...); field "
                    "'field' names the setting when one is at fault",
    "load_failed": "the backend could not load or compile the model (also: it would create more tensor "
                   "bytes than the agent's load memory budget)",
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
    # Device intermediates (engine.bridge.intermediates): node outputs of one run, for numerics.
    "intermediates": {"tensors": (_LIST, True), "inputs_npz_b64": (_OPT_STR, False)},
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
    "intermediates_result": {"tensors": (_LIST, True), "npz_b64": (_STR, True), "kind": (_STR, True)},
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
    # Messages may quote untrusted input (names, paths, exception text): never more than a bounded amount.
    return {"type": "error", "id": request_id, "code": code, "message": clip(message, MAX_ERROR_MESSAGE_CHARS),
            **extra}


def clip(text: Any, limit: int = ECHO_CHARS) -> str:
    """`text` (untrusted: names, archive entries, exception messages) cut to `limit` characters."""
    text = text if isinstance(text, str) else repr(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def encode(message: Mapping[str, Any]) -> str:
    """One JSON text message.  NaN/Infinity are not JSON: refuse them here, not on the other side."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def decode(text: str, schemas: Mapping[str, Mapping] = CLIENT_MESSAGES) -> dict:
    """Parse and validate one text message.  Raises ProtocolError (bad_message / unknown_type)."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also integers of more than 4300 digits
        raise ProtocolError("bad_message", f"not JSON: {clip(str(exc))}") from None
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
        raise ProtocolError("bad_message", f"'{clip(kind)}' message has no string 'id'")
    if isinstance(request_id, str) and len(request_id) > MAX_ID_CHARS:
        raise ProtocolError("bad_message", f"the message id has {len(request_id)} characters; at most "
                                           f"{MAX_ID_CHARS}")
    if kind not in schemas:
        raise ProtocolError("unknown_type", f"unknown message type {clip(kind)!r} in {PROTOCOL}; "
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
# Ranges of the numeric settings: beyond them a value is a mistake or an attack, never a wish.
SETTINGS_RANGES = {"runs": (1, 10_000_000), "warmup": (0, 100_000), "threads": (0, 1024),
                   "seed": (0, 2 ** 63 - 1)}
MAX_DIMENSION = 1 << 24          # one side of an input shape or of `size`
MAX_INPUT_RANK = 16
MAX_NAMED_INPUTS = 1000
MAX_INPUTS_CHARS = 200           # "random", "zeros", "upload:<sha256>"


def bad_setting(field: str, problem: str) -> ProtocolError:
    """bad_settings naming the field at fault (its `field` key), quoting nothing unbounded."""
    return ProtocolError("bad_settings", f"settings.{field}: {problem}", field=field.split("[")[0].split(".")[0])


def _whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_dimensions(field: str, dims: Any) -> tuple[int, ...]:
    if not isinstance(dims, list) or not 0 < len(dims) <= MAX_INPUT_RANK:
        raise bad_setting(field, f"must be a list of 1 to {MAX_INPUT_RANK} positive integers")
    for index, size in enumerate(dims):
        if not _whole_number(size) or not 0 < size <= MAX_DIMENSION:
            raise bad_setting(f"{field}[{index}]", f"must be an integer from 1 to {MAX_DIMENSION}, got "
                                                   f"{clip(size, 40)}")
    return tuple(dims)


def settings_from_wire(data: Mapping[str, Any]):
    """ProfileSettings from the wire form (ProfileSettings.to_dict).

    Every field is checked for type and range before anything uses it; a wrong
    one raises ProtocolError(bad_settings) whose `field` names it.  Unknown keys
    are ignored on purpose (keys may be added within version 1).
    """
    from engine.profile import MODES
    from engine.targets.settings import ProfileSettings, TargetError
    if not isinstance(data, Mapping):
        raise ProtocolError("bad_settings", "settings must be an object")
    kwargs = {k: v for k, v in data.items() if k in _SETTINGS_KEYS and v is not None}
    for key, (low, high) in SETTINGS_RANGES.items():
        if key in kwargs and (not _whole_number(kwargs[key]) or not low <= kwargs[key] <= high):
            raise bad_setting(key, f"must be an integer from {low} to {high}, got {clip(kwargs[key], 40)}")
    if "mode" in kwargs and kwargs["mode"] not in MODES:
        raise bad_setting("mode", f"must be one of {', '.join(MODES)}, got {clip(kwargs['mode'], 40)}")
    if "inputs" in kwargs and (not isinstance(kwargs["inputs"], str) or len(kwargs["inputs"]) > MAX_INPUTS_CHARS):
        raise bad_setting("inputs", "must be 'random', 'zeros' or 'upload:<sha256 of an uploaded .npz>'")
    if "size" in kwargs:
        kwargs["size"] = _check_dimensions("size", kwargs["size"])
        if len(kwargs["size"]) != 2:
            raise bad_setting("size", "must be [height, width]")
    if "input_shapes" in kwargs:
        shapes = kwargs["input_shapes"]
        if not isinstance(shapes, Mapping) or len(shapes) > MAX_NAMED_INPUTS:
            raise bad_setting("input_shapes", f"must be an object of at most {MAX_NAMED_INPUTS} input names "
                                              "-> shapes")
        kwargs["input_shapes"] = {name: _check_dimensions(f"input_shapes.{clip(name, 40)}", dims)
                                  for name, dims in shapes.items()}
    try:
        return ProfileSettings(**kwargs)
    except (TargetError, TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError("bad_settings", f"settings: {clip(str(exc))}") from None


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    cache_bytes: int = DEFAULT_CACHE_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    load_memory_bytes: int = DEFAULT_LOAD_MEMORY_BYTES
    upload_expiry_s: float = DEFAULT_UPLOAD_EXPIRY_S

    def to_dict(self) -> dict:
        return {"max_message_bytes": self.max_message_bytes, "max_model_bytes": self.max_model_bytes,
                "chunk_bytes": self.chunk_bytes, "cache_bytes": self.cache_bytes,
                "hello_timeout_s": HELLO_TIMEOUT_S, "upload_idle_timeout_s": UPLOAD_IDLE_TIMEOUT_S,
                "pre_hello_max_message_bytes": PRE_HELLO_MAX_MESSAGE_BYTES,
                "max_connections": self.max_connections, "load_memory_bytes": self.load_memory_bytes,
                "upload_expiry_s": self.upload_expiry_s}
