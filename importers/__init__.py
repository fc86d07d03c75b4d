"""Format registry: picks the importer for a file by its content, not only its name.

Each format is one module in this package exposing the same small interface
(the Netron habit):

    FORMAT: str                                  # "onnx", "coreml"
    EXTENSIONS: tuple[str, ...]                  # (".onnx",)
    def sniff(path: Path) -> bool                # cheap content check
    def load(path: Path, input_shapes=None) -> engine.ir.Model

`load` raises `engine.ir.ModelLoadError` with a message that names the file
and the problem.  Adding a format means adding a module and listing it in
`_FORMAT_MODULES`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Mapping, Optional, Sequence

from engine.gc_pause import collector_paused
from engine.ir import Model, ModelLoadError

_FORMAT_MODULES = ("importers.onnx", "importers.coreml", "importers.pt2", "importers.tflite")

InputShapes = Mapping[str, Sequence[int]]


# Formats whose module could not be imported (a missing optional library): name -> reason.
unavailable_formats: dict[str, str] = {}


def formats() -> list[ModuleType]:
    """The importable format modules; one whose library is missing is skipped, not fatal."""
    modules = []
    for name in _FORMAT_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ImportError as exc:
            unavailable_formats[name] = str(exc)
    return modules


def supported_extensions() -> list[str]:
    return [ext for module in formats() for ext in module.EXTENSIONS]


def importer_for(path: Path) -> ModuleType:
    """The importer that claims the file by content; else the one its extension names."""
    modules = formats()
    for module in modules:
        if module.sniff(path):
            return module
    for module in modules:
        if path.suffix.lower() in module.EXTENSIONS:
            return module  # its load() explains what is wrong with the content
    if path.is_dir():
        for module in modules:
            if getattr(module, "DIRECTORY_FORMAT", False):
                return module  # says what a model directory of its format must contain
    what = "the content is neither ONNX nor Core ML nor a PyTorch .pt2 program nor a TFLite/LiteRT flatbuffer"
    if path.is_file():
        with open(path, "rb") as handle:
            kind = content_kind(handle.read(512))
        what = f"the file is {kind}" if kind else what
    raise ModelLoadError(str(path), f"not a model file LayerScope can read: {what} "
                                    f"(supported: {', '.join(supported_extensions())})")


# Leading bytes of files people open by mistake, so an error can say what the file is.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
               (b"%PDF-", "a PDF document"), (b"PK\x03\x04", "a zip archive"), (b"\x1f\x8b", "a gzip archive"),
               (b"\x7fELF", "a program (ELF)"))


def content_kind(head: bytes) -> Optional[str]:
    """\"a PNG image\", \"plain text\"... for the first bytes of a file that is not a model; None if unknown."""
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # may end inside a character: then judge the rest
        text = head[:-3].decode("utf-8", errors="replace")
    if text and "\ufffd" not in text and all(c.isprintable() or c in "\t\r\n" for c in text):
        return "plain text"
    return None


def not_a_model(model: str, kind: Optional[str], exc: Exception) -> str:
    """"not an ONNX model: the file is plain text, which does not parse as an ONNX protobuf (the
    parser's words)"; `model` is "an ONNX", "a Core ML"; `kind` what content_kind found, or None."""
    content = f"the file is {kind}, which does not parse" if kind else "the content does not parse"
    return f"not {model} model: {content} as {model} protobuf ({exc})"


def open_model(path: str | Path, input_shapes: Optional[InputShapes] = None) -> Model:
    """Open any supported model file.  Raises ModelLoadError with a readable message."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(str(path), "no such file or directory")
    module = importer_for(path)
    try:
        with collector_paused():  # see engine.gc_pause: a third of a 20,000-node import otherwise
            return module.load(path, input_shapes=input_shapes)
    except ModelLoadError:
        raise
    except MemoryError:
        raise ModelLoadError(str(path), "not enough memory to open this model")
    except Exception as exc:  # a library failing on a malformed file: name it, no traceback
        raise ModelLoadError(str(path), f"could not be read as {module.FORMAT}: "
                                        f"{type(exc).__name__}: {exc}") from exc
