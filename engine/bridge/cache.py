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
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Optional

from engine.bridge.protocol import UPLOAD_FORMATS, ProtocolError, clip
from engine.convert.layermap import layer_map_path

__all__ = ["ModelCache", "Upload", "CachedModel", "safe_extract", "format_for_name"]

_HASH_CHUNK = 1 << 20
_MAX_ARCHIVE_ENTRIES = 100_000
_MAX_LINK_TARGET_BYTES = 4096   # a link's target text is read at most this far (PATH_MAX)


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
_STORED_FORMATS = set(_STORED_NAMES) | {"mlpackage"}
_STAGING_PREFIX = ".staging-"


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
        raise ProtocolError("unsafe_archive", f"archive entry with an empty or NUL-containing name: {clip(name)!r}")
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise ProtocolError("unsafe_archive", f"archive entry with an absolute path: {clip(name)!r}")
    parts = [p for p in PurePosixPath(normalized).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ProtocolError("unsafe_archive", f"archive entry leaving its folder ('..'): {clip(name)!r}")
    if not parts:
        raise ProtocolError("unsafe_archive", f"archive entry without a name: {clip(name)!r}")
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
        raise ProtocolError("unsafe_archive", f"archive entry {clip(str(member))!r} is a link to {clip(target)!r}, "
                                              "outside the package folder")
    # Even links that stay inside are refused: a model package has no use for them, and writing
    # through a link created by an earlier entry is how extraction escapes its folder.
    raise ProtocolError("unsafe_archive", f"archive entry {clip(str(member))!r} is a link ({clip(target)!r}); "
                                          "links are not accepted in uploaded packages")


def _write_member(dest: Path, relative: PurePosixPath, source: BinaryIO, budget: list[int]) -> None:
    target = dest.joinpath(*relative.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The parent chain was created by us from checked names: resolve once more to be sure.
    if not str(target.parent.resolve()).startswith(str(dest.resolve())):
        raise ProtocolError("unsafe_archive", f"archive entry {clip(str(relative))!r} resolves outside the folder")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError:
        raise ProtocolError("unsafe_archive", f"archive has entry {clip(str(relative))!r} twice") from None
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
                # The sizes the zip declares, checked before a byte is unpacked (zipfile never
                # inflates an entry beyond its declared size, so this bounds the real output too).
                declared = sum(info.file_size for info in infos)
                if declared > max_bytes:
                    raise ProtocolError("model_too_large", f"the archive declares {declared} unpacked bytes; "
                                                           f"the agent accepts at most {max_bytes}")
                for info in infos:
                    relative = _check_member_name(info.filename)
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        with zf.open(info) as source:  # the target text, bounded: never the whole entry
                            target = source.read(_MAX_LINK_TARGET_BYTES)
                        _refuse_link(relative, target.decode("utf-8", "replace"), True)
                    # Zips from non-Unix tools leave the type bits 0: a plain entry.
                    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                        raise ProtocolError("unsafe_archive", f"archive entry {clip(info.filename)!r} is not a "
                                                              "plain file or folder")
                    if info.is_dir():
                        dest.joinpath(*relative.parts).mkdir(parents=True, exist_ok=True)
                        continue
                    with zf.open(info) as source:
                        _write_member(dest, relative, source, budget)
        except ProtocolError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as exc:
            raise ProtocolError("bad_archive", f"the zip archive cannot be read: {clip(str(exc))}") from None
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
                    raise ProtocolError("unsafe_archive", f"archive entry {clip(member.name)!r} is not a plain "
                                                          "file or folder (device, FIFO, ...)")
                if member.size > budget[0]:
                    raise ProtocolError("model_too_large", "the unpacked archive exceeds the agent's maximum "
                                                           "model size")
                source = tf.extractfile(member)
                if source is None:
                    raise ProtocolError("bad_archive", f"archive entry {clip(member.name)!r} has no data")
                with source:
                    _write_member(dest, relative, source, budget)
    except ProtocolError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise ProtocolError("bad_archive", "the archive is neither a readable zip nor tar file: "
                                           f"{clip(str(exc))}") from None


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


# ============================================================================ where and how entries are kept

def default_cache_dir() -> Path:
    """The agent's cache in the user's cache directory (never a shared temp folder).

    Linux and other Unix: $XDG_CACHE_HOME or ~/.cache; macOS: ~/Library/Caches;
    Windows: %LOCALAPPDATA%.  Always a `layerscope/agent` folder inside it.
    """
    home = Path.home()
    if sys.platform == "darwin":
        base = home / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".cache"
    return base / "layerscope" / "agent"


def private_folder(path: Path) -> Path:
    """Create `path` readable by its owner only; refuse a folder another user owns (they could swap models)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.name == "posix":
        info = path.stat()
        if info.st_uid != os.getuid():
            raise ValueError(f"cache folder {path} belongs to another user; give a folder of your own "
                             "(--cache-dir)")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(path, 0o700)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive but not ours to signal
    return True


def _content_digest(path: Path) -> str:
    """sha256 of a file's bytes, streamed; for a folder (an unpacked package), of its files' names and digests."""
    if path.is_file():
        hasher = hashlib.sha256()
        with open(path, "rb") as handle:
            while True:
                block = handle.read(_HASH_CHUNK)
                if not block:
                    break
                hasher.update(block)
        return hasher.hexdigest()
    hasher = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink()):
        if item.is_symlink():
            raise OSError(f"{item} is a link (nothing in a cached package is)")
        hasher.update(f"{item.relative_to(path).as_posix()}\0{_content_digest(item)}\n".encode("utf-8"))
    return hasher.hexdigest()


def _stat_signature(path: Path) -> tuple:
    """What changes when a file is written, replaced or truncated (ctime cannot be set back by hand)."""
    items = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    signature = []
    for item in items:
        info = item.stat()
        signature.append((str(item), info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino))
    return tuple(signature)


# ============================================================================ the cache

class ModelCache:
    """Verified uploads by sha256, bounded in bytes, least recently used evicted first.  Thread-safe."""

    def __init__(self, root: Path, cache_bytes: int, max_model_bytes: int):
        self.root = Path(root)
        self.cache_bytes = int(cache_bytes)
        self.max_model_bytes = int(max_model_bytes)
        self.models_dir = self.root / "models"
        self.partial_dir = self.root / "partial"
        # Working copies a backend makes of a model (ONNX Runtime's session file): inside the cache
        # folder, private like it, never in a shared temp folder.
        self.work_dir = self.root / "work"
        for folder in (self.root, self.models_dir, self.partial_dir, self.work_dir):
            private_folder(folder)
        self._lock = threading.RLock()
        self._pins: dict[str, int] = {}
        self._active_uploads: dict[str, Upload] = {}  # sha256 -> upload being received
        self._verified: dict[str, tuple] = {}  # sha256 -> stat signature of the stored bytes last verified
        self.remove_leftovers()

    # -- queries --------------------------------------------------------------------------

    def get(self, sha256: str) -> Optional[CachedModel]:
        """The entry as its meta.json describes it, unverified (see `verified`); None if absent or unreadable."""
        if not _is_sha256(sha256):
            return None
        with self._lock:
            meta = self._meta(sha256)
            if meta is None:
                return None
            meta["last_used"] = time.time()
            _write_json(self.models_dir / sha256 / "meta.json", meta)
            return CachedModel(sha256, self.models_dir / sha256 / meta["stored"], meta["format"],
                               int(meta["size"]), meta.get("name", ""), bool(meta.get("layer_map")))

    def _meta(self, sha256: str) -> Optional[dict]:
        """meta.json of an entry; an entry whose meta.json is unreadable or incomplete is evicted."""
        folder = self.models_dir / sha256
        if not folder.exists():
            return None
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or not isinstance(meta.get("stored"), str) or "/" in meta["stored"] \
                    or meta.get("format") not in _STORED_FORMATS:
                raise ValueError("incomplete")
            int(meta["size"])
            return meta
        except (OSError, ValueError, KeyError, TypeError):
            self.evict(sha256)
            return None

    def verified(self, sha256: str) -> Optional[CachedModel]:
        """The entry, after checking its stored bytes still have the digest they had when stored.

        Hashing streams the file(s); the result is remembered by size, mtime, ctime and
        inode, so a model served and then loaded is hashed once.  A damaged, replaced,
        truncated or unreadable entry is evicted and ProtocolError(unknown_model) raised:
        the client uploads it again.  None when the entry is simply absent.
        """
        cached = self.get(sha256)
        if cached is None:
            return None
        try:
            signature = _stat_signature(cached.path)
            with self._lock:
                if self._verified.get(sha256) == signature:
                    return cached
                expected = sha256 if cached.path.is_file() else self._meta(sha256).get("content_sha256")
            actual = _content_digest(cached.path)
            if actual != expected:
                raise OSError("the stored bytes have changed since they were verified")
        except (OSError, AttributeError) as exc:
            self.evict(sha256)
            raise ProtocolError("unknown_model", f"the cached copy of model {sha256[:12]}... was damaged "
                                                 f"({clip(str(exc), 120)}) and has been removed; upload it "
                                                 "again") from None
        with self._lock:
            self._verified[sha256] = signature
        return cached

    def evict(self, sha256: str) -> None:
        with self._lock:
            self._verified.pop(sha256, None)
            shutil.rmtree(self.models_dir / sha256, ignore_errors=True)

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
            # Room for the whole announced size now, so partial uploads never outgrow the cache.
            self._make_room(size, uploading=sha256)
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
        # The pid in the name lets a later agent remove the folder if this one is killed mid-way.
        staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", dir=self.models_dir))
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
            # A package folder is not the bytes that were uploaded: its own digest, for `verified`.
            content = upload.sha256 if fmt != "mlpackage" else _content_digest(staging / stored)
            _write_json(staging / "meta.json", {"sha256": upload.sha256, "size": upload.size, "format": fmt,
                                                "name": upload.name, "stored": stored, "layer_map": layer_map,
                                                "stored_bytes": stored_bytes, "content_sha256": content,
                                                "last_used": time.time()})
            with self._lock:
                self._make_room(stored_bytes, uploading=upload.sha256)
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
        if cached is None:
            raise ProtocolError("unknown_model", "the model was removed from the cache as it was stored; "
                                                 "upload it again")
        with self._lock:  # the bytes were just hashed: no need to hash them again when first served
            self._verified[upload.sha256] = _stat_signature(cached.path)
        return cached

    def _partial_usage(self, uploading: Optional[str]) -> list[tuple[float, Path, int]]:
        """(last change, part file, bytes reserved) of every partial upload but `uploading`'s.

        A partial upload, received or parked, reserves the size it announced until it completes, expires
        or gives way: abandoned uploads can never make the cache folder outgrow `cache_bytes`."""
        usage = []
        for part in self.partial_dir.glob("*.part"):
            if part.stem == uploading:
                continue
            try:
                info = part.stat()
            except OSError:
                continue  # finished or removed meanwhile
            try:
                announced = json.loads(part.with_suffix(".json").read_text(encoding="utf-8"))["size"]
            except (OSError, ValueError, KeyError, TypeError):
                announced = 0
            usage.append((info.st_mtime, part, max(info.st_size, announced if isinstance(announced, int) else 0)))
        return usage

    def _make_room(self, incoming: int, uploading: Optional[str] = None) -> None:
        """Evict until `incoming` more bytes fit: least recently used models first, then the oldest parked
        partial uploads.  Models in use and uploads being received stay.  Caller holds the lock."""
        if incoming > self.cache_bytes:
            raise ProtocolError("model_too_large", f"the model needs {incoming} bytes of cache, more than the "
                                                   f"agent's whole cache ({self.cache_bytes} bytes)")
        entries = []
        for meta_path in self._meta_paths():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                entries.append((float(meta.get("last_used", 0)), meta_path.parent, int(meta["stored_bytes"])))
            except (OSError, ValueError, KeyError, json.JSONDecodeError):
                self.evict(meta_path.parent.name)
        partials = self._partial_usage(uploading)
        total = sum(e[2] for e in entries) + sum(p[2] for p in partials)
        for _, folder, size in sorted(entries, key=lambda e: e[0]):
            if total + incoming <= self.cache_bytes:
                break
            if self._pins.get(folder.name):
                continue
            self.evict(folder.name)
            total -= size
        for _, part, size in sorted(partials, key=lambda p: p[0]):
            if total + incoming <= self.cache_bytes:
                break
            if part.stem in self._active_uploads:
                continue
            self._remove_partial(part.stem)
            total -= size
        if total + incoming > self.cache_bytes:
            raise ProtocolError("model_too_large", "the cache is full of models in use and uploads in progress; "
                                                   "unload one or wait for an upload to finish")

    def _remove_partial(self, sha256: str) -> None:
        (self.partial_dir / f"{sha256}.part").unlink(missing_ok=True)
        (self.partial_dir / f"{sha256}.json").unlink(missing_ok=True)

    def remove_own_temporaries(self) -> None:
        """This process's staging folders and work copies (it is about to exit without its finalizers)."""
        for folder in [*self.models_dir.glob(f"{_STAGING_PREFIX}{os.getpid()}-*"),
                       *self.work_dir.glob(f"*-{os.getpid()}-*")]:
            shutil.rmtree(folder, ignore_errors=True)

    def remove_leftovers(self, upload_expiry_s: Optional[float] = None) -> list[str]:
        """Remove what no one will finish: staging folders and work copies of agents that are gone,
        and (with `upload_expiry_s`) parked partial uploads untouched for that long.  Returns what went."""
        removed = []
        for folder in [*self.models_dir.glob(f"{_STAGING_PREFIX}*"), *self.work_dir.glob("*-*")]:
            # Names are PREFIX<pid>-<random>: the pid of the agent that made the folder.
            pid_text = folder.name.lstrip(".").rsplit("-", 2)[-2] if folder.name.count("-") >= 2 else ""
            if pid_text.isdigit() and (int(pid_text) == os.getpid() or _pid_alive(int(pid_text))):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
        if upload_expiry_s is not None:
            cutoff = time.time() - upload_expiry_s
            with self._lock:
                for path in [*self.partial_dir.glob("*.part"), *self.partial_dir.glob("*.json")]:
                    if path.stem in self._active_uploads:
                        continue
                    part = path.with_suffix(".part")
                    try:
                        newest = max(p.stat().st_mtime for p in (path, part) if p.exists())
                    except (OSError, ValueError):
                        continue
                    if newest < cutoff or not part.exists():
                        self._remove_partial(path.stem)
                        removed.append(str(path))
        return removed

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
