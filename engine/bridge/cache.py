"""The agent's model cache: uploads (resumable), sha256 checks, safe unpacking, LRU bound in bytes.

Layout under the cache directory:

    models/<sha256>/meta.json            size, format, name, stored bytes, last use
    models/<sha256>/model.onnx           (or model.mlmodel, model.mlpackage/, inputs.npz, blob)
    models/<sha256>/model.layermap.json  the layer map that came with an .mlpackage, if any
    partial/<sha256>.part                bytes received so far of an unfinished upload
    partial/<sha256>.json                its announced size, format and name

Invariants:

- A model directory appears only complete: bytes are verified against the
  announced sha256 and archives unpacked into a temporary folder that is
  renamed into place.
- Total stored bytes of `models/` stay at or below `cache_bytes`; the least
  recently used models go first; a model in use (pinned) is never evicted.
- Archives are unpacked by our own code, never by `extractall`: every entry is
  a plain file or directory under the destination; absolute paths, '..',
  links, devices and FIFOs are refused, and so is unpacking more than
  `max_bytes`.  Nothing in an upload is ever executed or imported.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Optional

from engine.bridge.protocol import UPLOAD_FORMATS, ProtocolError
from engine.convert.layermap import layer_map_path

__all__ = ["ModelCache", "Upload", "CachedModel", "safe_extract", "format_for_name"]

_HASH_CHUNK = 1 << 20
_MAX_ARCHIVE_ENTRIES = 100_000


def format_for_name(name: str) -> str:
    lower = name.lower()
    if lower.endswith(".onnx"):
        return "onnx"
    if lower.endswith(".mlmodel"):
        return "mlmodel"
    if lower.endswith((".mlpackage.zip", ".zip")):
        return "mlpackage-zip"
    if lower.endswith((".tar", ".tar.gz", ".tgz", ".mlpackage.tar")):
        return "mlpackage-tar"
    if lower.endswith(".npz"):
        return "npz"
    return "file"


_STORED_NAMES = {"onnx": "model.onnx", "mlmodel": "model.mlmodel", "npz": "inputs.npz", "file": "blob"}


@dataclass
class CachedModel:
    sha256: str
    path: Path          # the file or .mlpackage directory a backend opens
    format: str         # onnx, mlmodel, mlpackage, npz, file
    size: int           # bytes uploaded
    name: str = ""
    layer_map: bool = False  # an .mlpackage that came with its layer map (stored beside it)


@dataclass
class Upload:
    upload_id: str
    sha256: str
    size: int
    format: str
    name: str
    part_path: Path
    received: int
    hasher: "hashlib._Hash"
    handle: Optional[BinaryIO] = None
    last_chunk: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)


# ============================================================================ safe unpacking

def _check_member_name(name: str) -> PurePosixPath:
    """The relative path of an archive entry, or ProtocolError(unsafe_archive)."""
    if not name or "\x00" in name:
        raise ProtocolError("unsafe_archive", f"archive entry with an empty or NUL-containing name: {name!r}")
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise ProtocolError("unsafe_archive", f"archive entry with an absolute path: {name!r}")
    parts = [p for p in PurePosixPath(normalized).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ProtocolError("unsafe_archive", f"archive entry leaving its folder ('..'): {name!r}")
    if not parts:
        raise ProtocolError("unsafe_archive", f"archive entry without a name: {name!r}")
    return PurePosixPath(*parts)


def _link_leaves(member: PurePosixPath, target: str, relative_to_member: bool) -> bool:
    if not target or target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        return True
    base = list(member.parent.parts) if relative_to_member else []
    for part in target.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not base:
                return True
            base.pop()
        else:
            base.append(part)
    return False


def _refuse_link(member: PurePosixPath, target: str, relative_to_member: bool) -> None:
    if _link_leaves(member, target, relative_to_member):
        raise ProtocolError("unsafe_archive", f"archive entry {str(member)!r} is a link to {target!r}, "
                                              "outside the package folder")
    # Even links that stay inside are refused: a model package has no use for them, and writing
    # through a link created by an earlier entry is how extraction escapes its folder.
    raise ProtocolError("unsafe_archive", f"archive entry {str(member)!r} is a link ({target!r}); "
                                          "links are not accepted in uploaded packages")


def _write_member(dest: Path, relative: PurePosixPath, source: BinaryIO, budget: list[int]) -> None:
    target = dest.joinpath(*relative.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The parent chain was created by us from checked names: resolve once more to be sure.
    if not str(target.parent.resolve()).startswith(str(dest.resolve())):
        raise ProtocolError("unsafe_archive", f"archive entry {str(relative)!r} resolves outside the folder")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError:
        raise ProtocolError("unsafe_archive", f"archive has entry {str(relative)!r} twice") from None
    with os.fdopen(fd, "wb") as out:
        while True:
            block = source.read(_HASH_CHUNK)
            if not block:
                break
            budget[0] -= len(block)
            if budget[0] < 0:
                raise ProtocolError("model_too_large", "the unpacked archive exceeds the agent's maximum "
                                                       "model size")
            out.write(block)


def safe_extract(archive: Path, dest: Path, max_bytes: int) -> None:
    """Unpack a zip or tar archive into the empty folder `dest`, refusing anything unsafe.

    Raises ProtocolError: unsafe_archive (absolute path, '..', link, device,
    FIFO, duplicate), model_too_large (more than max_bytes unpacked),
    bad_archive (not a readable zip/tar).
    """
    dest.mkdir(parents=True, exist_ok=True)
    budget = [int(max_bytes)]
    if zipfile.is_zipfile(archive):
        try:
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                if len(infos) > _MAX_ARCHIVE_ENTRIES:
                    raise ProtocolError("unsafe_archive", f"archive has {len(infos)} entries")
                for info in infos:
                    relative = _check_member_name(info.filename)
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        _refuse_link(relative, zf.read(info).decode("utf-8", "replace"), True)
                    # Zips from non-Unix tools leave the type bits 0: a plain entry.
                    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                        raise ProtocolError("unsafe_archive", f"archive entry {info.filename!r} is not a "
                                                              "plain file or folder")
                    if info.is_dir():
                        dest.joinpath(*relative.parts).mkdir(parents=True, exist_ok=True)
                        continue
                    with zf.open(info) as source:
                        _write_member(dest, relative, source, budget)
        except ProtocolError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as exc:
            raise ProtocolError("bad_archive", f"the zip archive cannot be read: {exc}") from None
        return
    try:
        with tarfile.open(archive, mode="r:*") as tf:
            count = 0
            for member in tf:
                count += 1
                if count > _MAX_ARCHIVE_ENTRIES:
                    raise ProtocolError("unsafe_archive", "archive has too many entries")
                relative = _check_member_name(member.name)
                if member.issym():
                    _refuse_link(relative, member.linkname, True)
                if member.islnk():
                    _refuse_link(relative, member.linkname, False)
                if member.isdir():
                    dest.joinpath(*relative.parts).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise ProtocolError("unsafe_archive", f"archive entry {member.name!r} is not a plain "
                                                          "file or folder (device, FIFO, ...)")
                if member.size > budget[0]:
                    raise ProtocolError("model_too_large", "the unpacked archive exceeds the agent's maximum "
                                                           "model size")
                source = tf.extractfile(member)
                if source is None:
                    raise ProtocolError("bad_archive", f"archive entry {member.name!r} has no data")
                with source:
                    _write_member(dest, relative, source, budget)
    except ProtocolError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise ProtocolError("bad_archive", f"the archive is neither a readable zip nor tar file: {exc}") from None


def _package_root(folder: Path) -> Path:
    """The .mlpackage inside an unpacked archive: the folder itself or its one top-level package."""
    if (folder / "Manifest.json").is_file():
        return folder
    candidates = [p for p in folder.iterdir() if p.is_dir() and (p / "Manifest.json").is_file()]
    if len(candidates) == 1:
        return candidates[0]
    raise ProtocolError("bad_archive", "the archive holds no .mlpackage (no Manifest.json at its top level "
                                       "or in one top-level folder)")


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# ============================================================================ the cache

class ModelCache:
    """Verified uploads by sha256, bounded in bytes, least recently used evicted first.  Thread-safe."""

    def __init__(self, root: Path, cache_bytes: int, max_model_bytes: int):
        self.root = Path(root)
        self.cache_bytes = int(cache_bytes)
        self.max_model_bytes = int(max_model_bytes)
        self.models_dir = self.root / "models"
        self.partial_dir = self.root / "partial"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._pins: dict[str, int] = {}
        self._active_uploads: dict[str, Upload] = {}  # sha256 -> upload being received

    # -- queries --------------------------------------------------------------------------

    def get(self, sha256: str) -> Optional[CachedModel]:
        with self._lock:
            meta_path = self.models_dir / sha256 / "meta.json"
            if not _is_sha256(sha256) or not meta_path.is_file():
                return None
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                return None
            meta["last_used"] = time.time()
            _write_json(meta_path, meta)
            return CachedModel(sha256, self.models_dir / sha256 / meta["stored"], meta["format"],
                               int(meta["size"]), meta.get("name", ""), bool(meta.get("layer_map")))

    def stored_bytes(self) -> int:
        total = 0
        for meta_path in self._meta_paths():
            try:
                total += int(json.loads(meta_path.read_text(encoding="utf-8"))["stored_bytes"])
            except (OSError, ValueError, KeyError, json.JSONDecodeError):
                continue
        return total

    def _meta_paths(self):
        """meta.json of complete models (staging folders start with a dot and are not models yet)."""
        return [p for p in self.models_dir.glob("*/meta.json") if not p.parent.name.startswith(".")]

    def pin(self, sha256: str) -> None:
        with self._lock:
            self._pins[sha256] = self._pins.get(sha256, 0) + 1

    def unpin(self, sha256: str) -> None:
        with self._lock:
            count = self._pins.get(sha256, 0) - 1
            if count <= 0:
                self._pins.pop(sha256, None)
            else:
                self._pins[sha256] = count

    # -- uploads --------------------------------------------------------------------------

    def begin_upload(self, upload_id: str, sha256: str, size: int, name: str, fmt: str) -> Upload:
        """Start or resume an upload (caller checked the cache first).  Raises ProtocolError."""
        sha256 = sha256.lower()
        if not _is_sha256(sha256):
            raise ProtocolError("bad_message", "sha256 must be 64 hexadecimal digits")
        if size < 0:
            raise ProtocolError("bad_message", "size cannot be negative")
        if size > self.max_model_bytes:
            raise ProtocolError("model_too_large", f"the model has {size} bytes; this agent accepts at most "
                                                   f"{self.max_model_bytes} (--max-model-mb)",
                                max_model_bytes=self.max_model_bytes)
        fmt = fmt or format_for_name(name)
        if fmt not in UPLOAD_FORMATS:
            raise ProtocolError("bad_message", f"format must be one of {', '.join(UPLOAD_FORMATS)}")
        with self._lock:
            if sha256 in self._active_uploads:
                raise ProtocolError("upload_in_progress", "another connection is uploading this model now; "
                                                          "try again when it is done")
            part = self.partial_dir / f"{sha256}.part"
            info = self.partial_dir / f"{sha256}.json"
            received = 0
            hasher = hashlib.sha256()
            if part.is_file() and info.is_file():
                try:
                    announced = json.loads(info.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError):
                    announced = {}
                if announced.get("size") == size and part.stat().st_size <= size:
                    with open(part, "rb") as handle:  # resume: hash what is already there
                        while True:
                            block = handle.read(_HASH_CHUNK)
                            if not block:
                                break
                            hasher.update(block)
                            received += len(block)
                else:
                    part.unlink(missing_ok=True)
            _write_json(info, {"size": size, "format": fmt, "name": name})
            handle = open(part, "ab")
            upload = Upload(upload_id, sha256, size, fmt, name, part, received, hasher, handle)
            self._active_uploads[sha256] = upload
            return upload

    def park(self, upload: Upload) -> None:
        """Stop receiving (connection gone, idle): keep the bytes for a resume."""
        with self._lock:
            if upload.handle is not None:
                upload.handle.close()
                upload.handle = None
            if self._active_uploads.get(upload.sha256) is upload:
                del self._active_uploads[upload.sha256]

    def discard(self, upload: Upload) -> None:
        self.park(upload)
        upload.part_path.unlink(missing_ok=True)
        upload.part_path.with_suffix(".json").unlink(missing_ok=True)

    def write_chunk(self, upload: Upload, offset: int, payload) -> bool:
        """Append a chunk; True when the upload is complete.  Raises ProtocolError."""
        if offset != upload.received:
            raise ProtocolError("bad_offset", f"chunk starts at byte {offset}, the agent has {upload.received}",
                                expected=upload.received)
        if upload.received + len(payload) > upload.size:
            raise ProtocolError("bad_message", f"chunk goes past the announced size ({upload.size} bytes)")
        assert upload.handle is not None
        upload.handle.write(payload)
        upload.hasher.update(payload)
        upload.received += len(payload)
        upload.last_chunk = time.monotonic()
        return upload.received == upload.size

    def finish_upload(self, upload: Upload) -> CachedModel:
        """Verify the sha256, unpack if an archive, move into the cache, evict to fit.  Raises ProtocolError."""
        self.park(upload)
        digest = upload.hasher.hexdigest()
        if digest != upload.sha256:
            self.discard(upload)
            raise ProtocolError("checksum_mismatch", f"received bytes have sha256 {digest}, not {upload.sha256}; "
                                                     "the upload is discarded, send it again")
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.models_dir))
        layer_map: Optional[str] = None
        try:
            if upload.format in ("mlpackage-zip", "mlpackage-tar"):
                unpacked = staging / "unpacked"
                safe_extract(upload.part_path, unpacked, self.max_model_bytes)
                root = _package_root(unpacked)
                # `layerscope convert` writes OUT.layermap.json beside OUT.mlpackage; the client
                # sends it beside the package folder in the archive.  Only a plain file by that
                # exact name counts (safe_extract wrote nothing but plain files and folders).
                beside = unpacked / layer_map_path(root).name if root != unpacked else None
                root.rename(staging / "model.mlpackage")
                if beside is not None and beside.is_file():
                    os.replace(beside, layer_map_path(staging / "model.mlpackage"))
                    layer_map = layer_map_path(staging / "model.mlpackage").name
                shutil.rmtree(unpacked, ignore_errors=True)
                stored, fmt = "model.mlpackage", "mlpackage"
            else:
                stored, fmt = _STORED_NAMES[upload.format], upload.format
                os.replace(upload.part_path, staging / stored)
            stored_bytes = _tree_bytes(staging / stored) + (_tree_bytes(staging / layer_map) if layer_map else 0)
            _write_json(staging / "meta.json", {"sha256": upload.sha256, "size": upload.size, "format": fmt,
                                                "name": upload.name, "stored": stored, "layer_map": layer_map,
                                                "stored_bytes": stored_bytes, "last_used": time.time()})
            with self._lock:
                self._make_room(stored_bytes)
                final = self.models_dir / upload.sha256
                if final.exists():  # another connection finished the same model meanwhile
                    shutil.rmtree(staging, ignore_errors=True)
                else:
                    staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            self.discard(upload)
            raise
        self.discard(upload)  # the part file (moved or unpacked) and its info
        cached = self.get(upload.sha256)
        assert cached is not None
        return cached

    def _make_room(self, incoming: int) -> None:
        if incoming > self.cache_bytes:
            raise ProtocolError("model_too_large", f"the model needs {incoming} bytes of cache, more than the "
                                                   f"agent's whole cache ({self.cache_bytes} bytes)")
        entries = []
        for meta_path in self._meta_paths():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                entries.append((float(meta.get("last_used", 0)), meta_path.parent, int(meta["stored_bytes"])))
            except (OSError, ValueError, KeyError, json.JSONDecodeError):
                shutil.rmtree(meta_path.parent, ignore_errors=True)
        total = sum(e[2] for e in entries)
        for _, folder, size in sorted(entries, key=lambda e: e[0]):
            if total + incoming <= self.cache_bytes:
                break
            if self._pins.get(folder.name):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
        if total + incoming > self.cache_bytes:
            raise ProtocolError("model_too_large", "the cache is full of models in use; unload one first")

    def expire_idle_uploads(self, idle_s: float) -> list[Upload]:
        now = time.monotonic()
        with self._lock:
            idle = [u for u in self._active_uploads.values() if now - u.last_chunk > idle_s]
        for upload in idle:
            self.park(upload)
        return idle


def _is_sha256(text: str) -> bool:
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)
