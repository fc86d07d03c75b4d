"""Sweeps: one model profiled over a list of input sizes, or (generated samples) over alpha.

The speed-vs-size study mobile teams run before choosing a model.  A model
with free spatial dimensions is re-shaped; a LayerScope sample (its metadata
says `layerscope.sample`) is regenerated with the same parameters at each
size or width multiplier; a fixed-shape model cannot be swept by size and the
target says which input is fixed.

`keep_profiles`, when given a list, receives (Profile, ModelAnalysis) per setting.

The result is a table: one row (a plain dict) per setting, in the order
given, with latency (median, p10, p90 of plain runs, measured), MACs and
parameters (static, estimated by analysis), coverage and whether the profile
completed.  The chart is drawn by engine.report.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Optional, Sequence, Union

from engine.targets import ProfileSettings, ProgressCallback, Target, TargetError, get_target

__all__ = ["sample_parameters", "model_for_setting", "sweep_sizes", "sweep_alpha", "parse_size",
           "sweep_compute_units", "COREML_UNITS", "address_with_unit", "crossover"]

# Core ML's MLComputeUnits settings, in the order a chart reads best.
COREML_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")

Size = tuple[int, int]


def parse_size(text: Union[str, int, Sequence[int]]) -> Size:
    """'224' -> (224, 224); '256x192' -> (256, 192)."""
    if isinstance(text, int):
        return (text, text)
    if not isinstance(text, str):
        h, w = text
        return (int(h), int(w))
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise TargetError(f"size {text!r}: expected HxW such as 224x224 or one number such as 224") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise TargetError(f"size {text!r}: expected HxW with positive sides, such as 224x224")
    return (values[0], values[1])


def sample_parameters(model_path: Union[str, Path]) -> Optional[dict]:
    """The build parameters of a LayerScope sample file, or None for any other model."""
    import onnx
    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception:
        return None
    props = {p.key: p.value for p in proto.metadata_props}
    name = props.get("layerscope.sample")
    if not name:
        return None
    try:
        height, width = parse_size(props.get("size", "224"))
        return {"name": name, "alpha": float(props.get("alpha", 1.0)), "size": (height, width),
                "num_classes": int(props.get("num_classes", 1)), "seed": int(props.get("seed", 0)),
                "fold_batchnorm": props.get("fold_batchnorm", "false") == "true"}
    except (TargetError, ValueError):
        return None


def model_for_setting(model_path: Union[str, Path], workdir: Union[str, Path], size: Optional[Size] = None,
                      alpha: Optional[float] = None) -> tuple[Path, Optional[Size]]:
    """The file to profile for a size / alpha, and the size to ask the target for (None: as built).

    Samples are regenerated (their input shape is fixed at build time); other
    models keep their file and get the size as a shape setting.
    """
    params = sample_parameters(model_path)
    if params is None:
        if alpha is not None:
            raise TargetError(f"{Path(model_path).name}: alpha (width multiplier) can only be swept for "
                              "LayerScope's generated samples (layerscope sample mobileunet); "
                              "export the model at each width instead")
        return Path(model_path), size
    from engine.samples import write_sample
    build = {k: v for k, v in params.items() if k != "name"}
    if size is not None:
        build["size"] = tuple(size)
    if alpha is not None:
        build["alpha"] = float(alpha)
    if size is None and alpha is None:
        return Path(model_path), None
    h, w = build["size"]
    target = Path(workdir) / f"{params['name']}_a{build['alpha']:g}_{h}x{w}.onnx"
    try:
        write_sample(params["name"], target, **build)
    except ValueError as exc:
        raise TargetError(str(exc)) from None
    return target, None


def _row(setting: str, profile, analysis, **extra) -> dict:
    e2e = profile.end_to_end
    return {"setting": setting, **extra,
            "median_ms": e2e.median_ms if e2e else None, "p10_ms": e2e.p10_ms if e2e else None,
            "p90_ms": e2e.p90_ms if e2e else None, "cv": e2e.cv if e2e else None, "kind": e2e.kind if e2e else None,
            "macs": analysis.totals.macs, "flops": analysis.totals.flops, "params": analysis.totals.params,
            "coverage": profile.coverage, "runs": profile.runs_completed, "complete": profile.complete,
            "error": profile.error}


def _sweep(model_path, points: Sequence[tuple[str, dict, Optional[Size], Optional[float]]],
           settings: ProfileSettings, target: Optional[Target], progress: Optional[ProgressCallback],
           cancel: Optional[threading.Event], keep_profiles: Optional[list]) -> list[dict]:
    rows: list[dict] = []
    own_target = target is None
    target = target or get_target("cpu", model_path=model_path)  # LiteRT for a .tflite
    workdir = Path(tempfile.mkdtemp(prefix="layerscope-sweep-"))
    per_point = settings.warmup + settings.runs
    total = per_point * len(points)
    try:
        for index, (label, extra, size, alpha) in enumerate(points):
            if cancel is not None and cancel.is_set():
                break
            path, target_size = model_for_setting(model_path, workdir, size=size, alpha=alpha)
            point_settings = settings.replace(size=target_size) if size is not None else settings
            try:
                target.prepare(path, point_settings)
            except TargetError as exc:
                if not rows:
                    raise
                # A size the model cannot run at: keep the sizes measured, say which one failed.
                rows.append({"setting": label, **extra, "median_ms": None, "p10_ms": None, "p90_ms": None,
                             "cv": None, "kind": None, "macs": None, "flops": None, "params": None,
                             "coverage": None, "runs": 0, "complete": False, "error": str(exc)})
                break

            def point_progress(done, _total, message, _offset=index * per_point, _label=label):
                if progress is not None:
                    progress(_offset + done, total, f"{_label}: {message}")

            profile = target.profile(point_settings, point_progress, cancel)
            rows.append(_row(label, profile, target.analysis, **extra))  # type: ignore[attr-defined]
            if keep_profiles is not None:
                keep_profiles.append((profile, target.analysis))  # type: ignore[attr-defined]
            if not profile.complete:
                break
    finally:
        if own_target:
            target.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def sweep_sizes(model_path, sizes: Sequence[Union[str, Size]], settings: Optional[ProfileSettings] = None,
                target: Optional[Target] = None, progress: Optional[ProgressCallback] = None,
                cancel: Optional[threading.Event] = None, keep_profiles: Optional[list] = None) -> list[dict]:
    """One row per input size: {setting: "HxW", size: [h, w], median_ms, p10_ms, p90_ms, macs, ...}."""
    settings = settings or ProfileSettings(runs=10, warmup=2)
    points = []
    for size in sizes:
        h, w = parse_size(size)
        points.append((f"{h}x{w}", {"size": [h, w]}, (h, w), None))
    return _sweep(model_path, points, settings, target, progress, cancel, keep_profiles)


def sweep_alpha(model_path, alphas: Sequence[float], settings: Optional[ProfileSettings] = None,
                size: Optional[Union[str, Size]] = None, target: Optional[Target] = None,
                progress: Optional[ProgressCallback] = None, cancel: Optional[threading.Event] = None,
                keep_profiles: Optional[list] = None) -> list[dict]:
    """One row per width multiplier of a generated sample: {setting: "alpha=0.5", alpha, median_ms, ...}."""
    settings = settings or ProfileSettings(runs=10, warmup=2)
    fixed = parse_size(size) if size is not None else None
    points = [(f"alpha={float(a):g}", {"alpha": float(a)}, fixed, float(a)) for a in alphas]
    return _sweep(model_path, points, settings, target, progress, cancel, keep_profiles)


def address_with_unit(address: str, unit: str) -> str:
    """A Core ML target address (iphone:NAME or ws://...?device=...) asking for compute-unit setting `unit`."""
    base, _, query = address.partition("?")
    kept = [part for part in query.split("&") if part and not part.startswith("unit=")]
    return f"{base}?{'&'.join(kept + [f'unit={unit}'])}"


def sweep_compute_units(model_path, target_address: str, units: Sequence[str] = COREML_UNITS,
                        sizes: Sequence[Union[str, Size]] = (), settings: Optional[ProfileSettings] = None,
                        progress: Optional[ProgressCallback] = None, cancel: Optional[threading.Event] = None,
                        keep_profiles: Optional[list] = None, target_factory=None) -> list[dict]:
    """One row per (compute-unit setting, input size) of a Core ML target: the series of the chart
    are the settings, the x axis the sizes.  target_factory(address) makes a target (default
    get_target); every setting gets its own target, closed after its sizes.
    """
    settings = settings or ProfileSettings(mode="deployed", runs=10, warmup=2)
    factory = target_factory or get_target
    rows: list[dict] = []
    unknown = [u for u in units if u not in COREML_UNITS]
    if unknown:
        raise TargetError(f"compute-unit settings are {', '.join(COREML_UNITS)}; got {', '.join(unknown)}")
    parsed = [parse_size(size) for size in sizes]
    for index, unit in enumerate(units):
        if cancel is not None and cancel.is_set():
            break
        points = ([(f"{h}x{w}", {"size": [h, w], "series": unit, "compute_unit": unit}, (h, w), None)
                   for h, w in parsed] or [("model", {"series": unit, "compute_unit": unit}, None, None)])

        def unit_progress(done, total, message, _unit=unit, _index=index):
            if progress is not None:
                progress(_index * total + done, total * len(units), f"{_unit}: {message}")

        target = factory(address_with_unit(target_address, unit))
        try:
            rows += _sweep(model_path, points, settings, target, unit_progress, cancel, keep_profiles)
        finally:
            target.close()
        if rows and not rows[-1]["complete"]:
            break
    return rows


def crossover(rows: Sequence[dict], faster: str = "CPU_AND_GPU", than: str = "CPU_ONLY") -> Optional[str]:
    """The first setting (size) at which the `faster` series' median beats the `than` series', or None:
    "from which input size does the GPU beat the CPU?"."""
    medians = {(r.get("series"), r["setting"]): r.get("median_ms") for r in rows}
    for row in rows:
        if row.get("series") != faster:
            continue
        other = medians.get((than, row["setting"]))
        if row.get("median_ms") is not None and other is not None and row["median_ms"] < other:
            return row["setting"]
    return None
