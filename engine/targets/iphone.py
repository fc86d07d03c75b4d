"""A connected iPhone or iPad as a target, on a Mac: `--target iphone:NAME-or-UDID`.

    target = get_target("iphone:Anna's iPhone?unit=CPU_AND_NE&granularity=segment")
    target.prepare("model.onnx", settings)     # converted to an ML Program (layer map kept), compiled,
                                               # ModelRunner prepared on the phone, the model loaded there
    profile = target.profile(settings, progress, cancel)

Everything runs through engine.bridge.iphone (coremltools' ModelRunner); the figures and
their kinds are described there and in docs/iphone.md.  From Linux or Windows the same
phone is reached through a Mac running `layerscope agent`:
``ws://MAC:7878?device=NAME`` (engine.targets.bridge).

Query keys: ``unit`` (CPU_ONLY, CPU_AND_GPU, CPU_AND_NE, ALL; default ALL),
``granularity`` (model, segment, layer; default segment: one prefix model per stage; layer
cuts after every op, one compile and load on the phone per op), ``team`` (signing team).
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import parse_qs, unquote

from engine.profile import Profile
from engine.targets.settings import ProfileSettings, ProgressCallback, TargetError

__all__ = ["PhoneTarget", "IPHONE_SCHEME", "package_for_coreml", "parse_phone_address"]

IPHONE_SCHEME = "iphone:"
GRANULARITIES = ("model", "segment", "layer")


@dataclass(frozen=True)
class LocalModel:
    """A model file on this computer, shaped like the agent's cache entries that backends open."""

    path: Path
    format: str


def parse_phone_address(address: str) -> tuple[str, dict[str, str]]:
    """"iphone:NAME?unit=ALL" -> ("NAME", {"unit": "ALL"})."""
    if not address.startswith(IPHONE_SCHEME):
        raise TargetError(f"{address!r} is not an iphone: address (iphone:NAME-or-UDID)")
    rest = address[len(IPHONE_SCHEME):].lstrip("/")
    device, _, query = rest.partition("?")
    device = unquote(device).strip()
    if not device:
        raise TargetError("iphone: needs the phone's name or UDID, e.g. iphone:00008110-001A2B3C4D5E6F70 "
                          "(`layerscope devices` lists them)")
    return device, {key: values[0] for key, values in parse_qs(query).items() if values}


def package_for_coreml(model_path: Path, settings: ProfileSettings, workdir: Path,
                       progress=lambda message: None) -> tuple[Path, str]:
    """(package, format) Core ML can load: the file itself, or an ONNX model converted by
    engine.convert (its layer map beside it, so results come back keyed by the ONNX nodes)."""
    if model_path.suffix == ".mlpackage" or (model_path.is_dir() and (model_path / "Manifest.json").exists()):
        return model_path, "mlpackage"
    if model_path.suffix == ".mlmodel":
        return model_path, "mlmodel"
    if model_path.suffix != ".onnx":
        raise TargetError(f"{model_path.name}: Core ML targets take .onnx (converted here), .mlpackage or .mlmodel")
    from engine.convert import ConversionError, convert
    package = workdir / (model_path.stem + ".mlpackage")
    try:
        convert(model_path, package, input_shapes=dict(settings.input_shapes) or None, progress=progress)
    except ConversionError as exc:
        raise TargetError(f"{model_path.name} cannot be converted to Core ML: {exc}") from None
    return package, "mlpackage"


class PhoneTarget:
    """An iPhone or iPad connected to this Mac, as a Target.  One profile at a time."""

    name = "iphone"

    def __init__(self, address: str, team: Optional[str] = None, phone_api=None):
        self.device, query = parse_phone_address(address)
        self.compute_unit = query.get("unit") or "ALL"
        self.granularity = query.get("granularity") or "segment"
        if self.granularity not in GRANULARITIES:
            raise TargetError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        self.team = team or query.get("team")
        self.phone_api = phone_api  # tests: fakes of coremltools' device parts (engine.bridge.iphone)
        self._workdir = Path(tempfile.mkdtemp(prefix="layerscope-iphone-"))
        self._session = None
        self._source: Optional[Path] = None
        self._settings: Optional[ProfileSettings] = None
        self._analysis = None

    def prepare(self, model_path, settings: Optional[ProfileSettings] = None) -> None:
        from engine.bridge.backends import CoreMLBackend
        settings = settings or ProfileSettings(mode="deployed")
        if self.phone_api is None and sys.platform != "darwin":
            from engine.bridge.iphone import LINUX_HINT
            raise TargetError(f"iphone: targets run on a Mac (Xcode drives the phone); {LINUX_HINT}")
        path = Path(model_path)
        if not path.exists():
            from engine.ir import ModelLoadError
            raise ModelLoadError(str(path), "no such file or directory")
        self.close_session()
        package, fmt = package_for_coreml(path, settings, self._workdir)
        self._source = path if package != path else None
        try:
            self._session = CoreMLBackend(self.team).open(LocalModel(package, fmt), self.compute_unit, settings,
                                                          device=self.device, phone_api=self.phone_api)
        except TargetError:
            raise
        except Exception as exc:  # ProtocolError, BackendUnavailable: one readable line either way
            raise TargetError(str(getattr(exc, "message", None) or exc)) from None
        self._settings = settings
        self._analysis = None

    def profile(self, settings: Optional[ProfileSettings] = None, progress: Optional[ProgressCallback] = None,
                cancel: Optional[threading.Event] = None) -> Profile:
        if self._session is None:
            raise TargetError("no model prepared: call prepare(model_path, settings) first")
        settings = settings or self._settings
        cancel = cancel or threading.Event()
        last: list[Profile] = []

        def on_progress(done: int, total: int, phase: str, message: str) -> None:
            if progress is not None:
                progress(done, total, message)

        try:
            profile = self._session.profile(settings, self.granularity, None, on_progress, last.append, cancel)
        except TargetError:
            if last:  # the phone went away after some runs: keep them
                return replace(last[-1], complete=False, error="the phone stopped answering; the completed runs "
                                                               "are kept")
            raise
        target = dict(profile.target)
        target["address"] = f"{IPHONE_SCHEME}{self.device}"
        return replace(profile, target=target)

    @property
    def analysis(self):
        """Static analysis of what the profile is keyed by: the ONNX source (converted here) or the package."""
        if self._session is None:
            raise TargetError("no model prepared: call prepare(model_path, settings) first")
        if self._analysis is None:
            layer_map = self._session.layer_map
            source = Path(str(layer_map.get("source_model") or "")) if layer_map is not None else None
            if source is not None and source.is_file():
                # Results keyed by the ONNX nodes: the source's analysis, at the shapes it was converted at.
                from engine.analysis import analyze
                from importers import open_model
                shapes = layer_map.get("options", {}).get("input_shapes") or None
                self._analysis = analyze(open_model(source, input_shapes=shapes))
            else:
                self._analysis = self._session.analysis
        return self._analysis

    def run(self, inputs: Optional[Mapping[str, Any]] = None) -> dict:
        if self._session is None:
            raise TargetError("no model prepared: call prepare(model_path, settings) first")
        return self._session.run(inputs)

    def describe(self) -> dict:
        from engine.bridge.iphone import find_phone, list_phones
        entries, notes = list_phones(self.phone_api)
        if not entries:
            raise TargetError("; ".join(notes) or "no iPhone connected")
        entry = find_phone(self.device, entries)
        return {"name": "iphone", "device": entry["name"], "udid": entry["udid"],
                "hardware_model": entry["hardware_model"], "model_name": entry["model"],
                "os": f"{entry['os']} {entry['os_version']}", "compute_units": entry["compute_units"],
                "backend": "coreml", "ready": entry["ready"], **({"detail": entry["detail"]}
                                                                 if entry.get("detail") else {})}

    def close_session(self) -> None:
        if self._session is not None:
            try:
                self._session.close()
            finally:
                self._session = None

    def close(self) -> None:
        self.close_session()
        shutil.rmtree(self._workdir, ignore_errors=True)
