"""The types every target and the bridge share: settings of a profile and the error a person can fix.

A module of its own so that the bridge client and the targets can import them without
importing each other (engine.targets imports engine.targets.bridge, which imports
engine.bridge.client, which needs TargetError).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Optional, Sequence

from engine.profile import MODES

__all__ = ["TargetError", "ProfileSettings", "ProgressCallback", "INPUT_MODES"]

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
    # Read weights kept outside the model file even when they exceed the free memory (engine.free_memory).
    ignore_memory_check: bool = False

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
