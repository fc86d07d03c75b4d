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
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, runtime_checkable

from engine.profile import MODES, Profile

__all__ = ["TargetError", "ProfileSettings", "ProgressCallback", "Target", "get_target", "TARGET_NAMES",
           "INPUT_MODES"]

ProgressCallback = Callable[[int, int, str], None]

INPUT_MODES = ("random", "zeros")  # or the path of a .npz file


class TargetError(Exception):
    """A model that cannot run on a target, or settings that do not fit it.  One readable line."""


@dataclass(frozen=True)
class ProfileSettings:
    """How to profile.  Immutable; derive variants with `replace` (or `dataclasses.replace`).

    mode: "exact" (graph optimizations off, one timing per source node) or
          "deployed" (optimizations on, fused kernels mapped back to source nodes).
    threads: intra-op threads; 0 lets the runtime choose (one per physical core).  The
             default is 1: ORT's profiler books thread-pool statistics inside each kernel's
             time, which inflates per-node figures of small kernels when several threads run,
             and one thread gives figures that are stable on a shared machine and comparable
             across computers with different core counts.
    inputs: "random" (seeded, uniform [0, 1) for floats), "zeros", or the path of a .npz
            file whose arrays are named after the model's inputs.
    input_shapes: input name -> full shape, for inputs with free dimensions.
    size: (height, width) for the spatial dimensions of image inputs (rank 4, NCHW or NHWC).
    """

    mode: str = "exact"
    runs: int = 20
    warmup: int = 3
    threads: int = 1
    inputs: str = "random"
    seed: int = 0
    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    size: Optional[tuple[int, int]] = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise TargetError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.runs < 1:
            raise TargetError(f"runs must be at least 1, got {self.runs}")
        if self.warmup < 0:
            raise TargetError(f"warm-up runs cannot be negative, got {self.warmup}")
        if self.threads < 0:
            raise TargetError(f"threads cannot be negative, got {self.threads}")
        if self.size is not None and (len(self.size) != 2 or any(int(s) <= 0 for s in self.size)):
            raise TargetError(f"size must be (height, width) with positive sides, got {self.size!r}")
        object.__setattr__(self, "input_shapes",
                           {str(k): tuple(int(d) for d in v) for k, v in dict(self.input_shapes).items()})

    def replace(self, **changes) -> "ProfileSettings":
        return replace(self, **changes)

    def session_key(self) -> tuple:
        """The settings that change how the model is loaded (runs and warm-up do not)."""
        return (self.mode, self.threads, self.inputs, self.seed,
                tuple(sorted(self.input_shapes.items())), self.size)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "runs": self.runs, "warmup": self.warmup, "threads": self.threads,
                "inputs": self.inputs, "seed": self.seed,
                "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
                "size": list(self.size) if self.size else None}


@runtime_checkable
class Target(Protocol):
    """What every target offers.  Implementations: engine.targets.cpu.CpuTarget."""

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


TARGET_NAMES = ("cpu", "ws://HOST:PORT")


def get_target(name: str = "cpu") -> Target:
    if name == "cpu":
        from engine.targets.cpu import CpuTarget
        return CpuTarget()
    if name.startswith(("ws://", "wss://", "usb://")):  # an agent: engine.targets.bridge, docs/bridge-protocol.md
        from engine.targets.bridge import BridgeTarget
        return BridgeTarget(name)
    raise TargetError(f"unknown target {name!r}; available here: {', '.join(TARGET_NAMES)} "
                      "(devices connect through the bridge)")
