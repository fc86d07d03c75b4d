"""Sessions: one model and the profiles (and sweeps) taken of it, saved as one file.

The app's File > Save Session / Open Session and any script use these
functions; nothing here imports Qt, so sessions are tested headless.

    session = Session(model_path, profiles=(profile_a, profile_b), selected=1, overlay="time")
    save_session(session, "work.layerscope")      # atomic: temp file + os.replace
    session = load_session("work.layerscope")

The file is JSON, schema ``layerscope.session/1``:

    {"schema": "layerscope.session/1", "saved_at": ISO-8601 UTC,
     "model": {"path": absolute path, "relative_path": path relative to the session file or null},
     "profiles": [layerscope.profile/1 documents, in the order they were taken],
     "selected": index into profiles or null, "overlay": overlay key,
     "sweeps": [{"target": str, "settings": {...}, "rows": [engine.sweep rows], "created_at": str}]}

Keys may be added within version 1; none is removed or renamed.  The model
itself is not embedded (it can be hundreds of MB): it is found again by its
absolute path, else by its path relative to the session file, so a folder
holding both can be moved.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from engine.files import jsonable, write_text_atomically
from engine.layout import GROUPINGS
from engine.profile import Profile, ProfileFormatError

__all__ = ["SESSION_SCHEMA", "SessionFormatError", "SweepResult", "Session", "session_to_json_dict",
           "session_from_json_dict", "save_session", "load_session", "load_profile_json", "input_shapes_of",
           "profile_analysis"]

SESSION_SCHEMA = "layerscope.session/1"
SESSION_SUFFIX = ".layerscope"


class SessionFormatError(ValueError):
    """A file that is not a readable layerscope.session/1 document; the message says what is wrong."""


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class SweepResult:
    """The rows of one `engine.sweep` run (one line of the latency-vs-size chart)."""

    target: str  # the series name: which target the sweep ran on
    rows: tuple[Mapping[str, Any], ...]
    settings: Mapping[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=_now_iso)

    def to_json_dict(self) -> dict:
        return {"target": self.target, "settings": jsonable(dict(self.settings)),
                "rows": [jsonable(dict(r)) for r in self.rows], "created_at": self.created_at}

    @classmethod
    def from_json_dict(cls, data: Mapping) -> "SweepResult":
        return cls(str(data["target"]), tuple(dict(r) for r in data.get("rows", ())),
                   dict(data.get("settings", {})), str(data.get("created_at", "")))


@dataclass(frozen=True)
class Session:
    """A model path and what was measured on it.  Immutable: derive changes with the `with_` methods."""

    model_path: str
    profiles: tuple[Profile, ...] = ()
    sweeps: tuple[SweepResult, ...] = ()
    selected: Optional[int] = None  # index into profiles (the one the overlay shows)
    overlay: str = "none"
    # How the graph was drawn: grouping "none", "stage" or "namespace" (engine.layout.GROUPINGS;
    # None: not recorded, as in sessions saved before it was), the ids of the groups drawn
    # collapsed, and whether constants had boxes of their own.
    grouping: Optional[str] = None
    collapsed: tuple[str, ...] = ()
    show_constants: bool = False

    def __post_init__(self):
        object.__setattr__(self, "profiles", tuple(self.profiles))
        object.__setattr__(self, "sweeps", tuple(self.sweeps))
        object.__setattr__(self, "collapsed", tuple(self.collapsed))
        if self.selected is not None and not 0 <= self.selected < len(self.profiles):
            raise ValueError(f"selected profile {self.selected} out of range (the session has "
                             f"{len(self.profiles)} profiles)")

    def with_profile(self, profile: Profile, select: bool = True) -> "Session":
        profiles = self.profiles + (profile,)
        return replace(self, profiles=profiles, selected=len(profiles) - 1 if select else self.selected)

    def with_sweep(self, sweep: SweepResult) -> "Session":
        return replace(self, sweeps=self.sweeps + (sweep,))


def session_to_json_dict(session: Session, session_dir: Optional[Union[str, Path]] = None) -> dict:
    model_path = Path(session.model_path).resolve()
    relative = None
    if session_dir is not None:
        try:
            relative = os.path.relpath(model_path, Path(session_dir).resolve())
        except ValueError:  # another drive (Windows): no relative path exists
            relative = None
    return {"schema": SESSION_SCHEMA, "saved_at": _now_iso(),
            "model": {"path": str(model_path), "relative_path": relative},
            "profiles": [p.to_json_dict() for p in session.profiles],
            "selected": session.selected, "overlay": session.overlay,
            "view": {"grouping": session.grouping, "collapsed": list(session.collapsed),
                     "show_constants": session.show_constants},
            "sweeps": [s.to_json_dict() for s in session.sweeps]}


def session_from_json_dict(data: Any, session_dir: Optional[Union[str, Path]] = None) -> Session:
    if not isinstance(data, Mapping):
        raise SessionFormatError("not a LayerScope session: the document is not a JSON object")
    if data.get("schema") != SESSION_SCHEMA:
        raise SessionFormatError(f"not a LayerScope session: schema is {data.get('schema')!r}, "
                                 f"expected {SESSION_SCHEMA!r}")
    try:
        model = data["model"]
        path = str(model["path"])
        relative = model.get("relative_path")
        if not Path(path).exists() and relative and session_dir is not None:
            moved = (Path(session_dir) / relative).resolve()
            if moved.exists():
                path = str(moved)
        profiles = []
        for index, document in enumerate(data.get("profiles", ())):
            try:
                profiles.append(_profile_from_document(document))
            except ProfileFormatError as exc:
                raise SessionFormatError(f"profile {index + 1}: {exc}") from None
        selected = data.get("selected")
        selected = None if selected is None else int(selected)
        if selected is not None and not 0 <= selected < len(profiles):
            selected = len(profiles) - 1 if profiles else None
        sweeps = tuple(SweepResult.from_json_dict(s) for s in data.get("sweeps", ()))
        view = data.get("view") or {}  # absent in sessions saved before grouping was kept
        grouping = view.get("grouping")
        if grouping is not None and grouping not in GROUPINGS:
            raise SessionFormatError(f"unknown grouping {grouping!r}; known: {', '.join(GROUPINGS)}")
        return Session(path, tuple(profiles), sweeps, selected, str(data.get("overlay", "none")),
                       None if grouping is None else str(grouping),
                       tuple(str(g) for g in view.get("collapsed", ())), bool(view.get("show_constants", False)))
    except SessionFormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SessionFormatError(f"malformed {SESSION_SCHEMA} document: {type(exc).__name__}: {exc}") from None


def _profile_from_document(document: Mapping) -> Profile:
    """A profile as it was saved (a device profile's transfers and calibration included)."""
    return Profile.from_json_dict(document)


def load_profile_json(path: Union[str, Path]) -> Profile:
    """`Profile.load_json` (kept for callers: transfers and calibration are part of every profile)."""
    return Profile.load_json(Path(path))


def save_session(session: Session, path: Union[str, Path]) -> Path:
    """Write atomically: the file is either the old session or the complete new one, never half."""
    path = Path(path)
    text = json.dumps(session_to_json_dict(session, path.parent), indent=1, allow_nan=False)
    return write_text_atomically(path, text)


def load_session(path: Union[str, Path]) -> Session:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SessionFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SessionFormatError(f"{path}: is a directory, not a session file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SessionFormatError(f"{path}: not a JSON file ({exc})") from None
    try:
        return session_from_json_dict(data, path.parent)
    except SessionFormatError as exc:
        raise SessionFormatError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------- analyses of profiles

def input_shapes_of(analysis) -> dict[str, tuple]:
    """Input name -> shape of an analysed graph (the shapes its static figures were computed for)."""
    graph = analysis.graph
    shapes = {}
    for name in graph.inputs:
        value_type = graph.value_type(name)
        shapes[name] = tuple(value_type.shape) if value_type is not None and value_type.shape is not None else None
    return shapes


def _profiled_shapes(profile: Profile) -> dict[str, tuple]:
    return {str(k): tuple(int(d) for d in v) for k, v in dict(profile.settings.get("input_shapes") or {}).items()}


def profiled_at(profile: Profile, analysis) -> bool:
    """True when `profile` ran at the input shapes `analysis` was made for (or does not say)."""
    opened = input_shapes_of(analysis)
    return all(opened.get(name) == shape for name, shape in _profiled_shapes(profile).items())


def profile_analysis(model_path: Union[str, Path], profile: Profile, opened_analysis=None):
    """The static analysis matching `profile`'s input shapes (reports and hints join the two by node id).

    `opened_analysis` (the model as opened, at its own shapes) is returned when the
    shapes agree.  A profile taken at another size is analysed again: a
    LayerScope sample is regenerated at that size (as engine.sweep does, its
    input shape is fixed), any other model is opened with the profile's shapes.
    """
    from engine.analysis import analyze
    from importers import open_model

    shapes = _profiled_shapes(profile)
    if opened_analysis is not None and profiled_at(profile, opened_analysis):
        return opened_analysis
    from engine.sweep import model_for_setting, sample_parameters
    if len(shapes) == 1 and sample_parameters(model_path) is not None:
        dims = next(iter(shapes.values()))
        if len(dims) == 4:
            with tempfile.TemporaryDirectory(prefix="layerscope-analysis-") as workdir:
                path, _ = model_for_setting(model_path, workdir, size=(dims[2], dims[3]))
                return analyze(open_model(path))
    return analyze(open_model(model_path, input_shapes=shapes or None))
