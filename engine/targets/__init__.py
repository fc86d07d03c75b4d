"""Targets: the places a model runs, behind one interface (DESIGN.md, "Targets and the bridge").

    target = get_target("cpu")
    target.prepare(model_path, settings)          # convert / compile / load
    outputs = target.run(inputs)                  # one plain run
    profile = target.profile(settings, progress, cancel)   # -> engine.profile.Profile
    target.describe()                             # device, OS, chip, compute units, memory

`progress(done, total, message)` is called after every warm-up and measured
run; `cancel` (a threading.Event) is checked between runs, and a cancelled or
failed profile still returns the runs already measured (`complete=False`).

Problems a person can fix (a model the runtime cannot load, a wrong input
size, a Core ML model with no runtime here) raise `TargetError` with a message
that names what is wrong and what to do.
"""
from __future__ import annotations

import threading
from typing import Any, Mapping, Optional, Protocol, runtime_checkable

from engine.profile import Profile
from engine.targets.settings import INPUT_MODES, ProfileSettings, ProgressCallback, TargetError

__all__ = ["TargetError", "ProfileSettings", "ProgressCallback", "Target", "get_target", "TARGET_NAMES",
           "INPUT_MODES", "is_coreml_target"]


@runtime_checkable
class Target(Protocol):
    """What every target offers.  Implementations: CpuTarget, BridgeTarget, PhoneTarget, AndroidTarget."""

    name: str

    @property
    def analysis(self):  # engine.analysis.ModelAnalysis of the prepared model, at the shapes it runs
        ...

    def prepare(self, model_path: str, settings: ProfileSettings) -> None: ...

    def run(self, inputs: Optional[Mapping[str, Any]] = None) -> dict: ...

    def profile(self, settings: Optional[ProfileSettings] = None,
                progress: Optional[ProgressCallback] = None,
                cancel: Optional[threading.Event] = None) -> Profile: ...

    def describe(self) -> dict: ...

    def close(self) -> None: ...


TARGET_NAMES = ("cpu", "ws://HOST:PORT", "iphone:NAME-or-UDID", "android[:SERIAL]")


def is_coreml_target(name: str) -> bool:
    """A target that runs Core ML (a phone of this Mac, or an agent asked for its coreml backend or a phone)."""
    return name.startswith("iphone:") or ("backend=coreml" in name) or ("device=" in name)


def is_tflite_file(model_path) -> bool:
    """A .tflite (LiteRT) model, by content or name: it runs on LiteRT, not ONNX Runtime."""
    if model_path is None:
        return False
    from pathlib import Path
    from importers import tflite
    path = Path(model_path)
    return tflite.sniff(path) or path.suffix.lower() in tflite.EXTENSIONS


def get_target(name: str = "cpu", team: Optional[str] = None, model_path=None,
               benchmark_model: Optional[str] = None, delegates=None) -> Target:
    """The target called `name`; `model_path` picks the CPU reference's runtime (LiteRT for .tflite);
    team: Apple signing team (iphone:); benchmark_model, delegates: the binary and delegates of android targets."""
    if name == "cpu":
        if is_tflite_file(model_path):  # LiteRT's CPU reference: engine.targets.litert, docs/tflite.md
            from engine.targets.litert import LiteRtCpuTarget
            return LiteRtCpuTarget()
        from engine.targets.cpu import CpuTarget
        return CpuTarget()
    if name.startswith(("ws://", "wss://", "usb://")):  # an agent: engine.targets.bridge, docs/bridge-protocol.md
        from engine.targets.bridge import BridgeTarget
        return BridgeTarget(name)
    if name.startswith("iphone:"):  # a phone connected to this Mac: engine.targets.iphone, docs/iphone.md
        from engine.targets.iphone import PhoneTarget
        return PhoneTarget(name, team=team)
    if name == "android" or name.startswith("android:"):  # a phone over adb: engine.targets.android, docs/android.md
        from engine.targets.android import AndroidTarget
        return AndroidTarget(name, benchmark_model=benchmark_model, delegates=delegates)
    raise TargetError(f"unknown target {name!r}; available here: {', '.join(TARGET_NAMES)} "
                      "(`layerscope devices` lists agents and phones)")
