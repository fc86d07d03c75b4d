"""`layerscope profile` and `layerscope compare` (registered by engine.cli).

    layerscope profile MODEL [--target cpu] [--mode exact|deployed] [--runs N] [--warmup N]
                             [--threads N] [--size HxW ...] [--alpha A ...] [--shape NAME=DIMS]
                             [--inputs random|zeros|FILE.npz] [--seed N] [--json out.json]
                             [--report out.html] [--csv out.csv] [--trace out.json]
                             [--model-explorer out.json]
    layerscope compare A.json B.json [--report diff.html] [--json diff.json] [--markdown diff.md]
    layerscope report P1.json [P2.json ...] -o report.html [--model MODEL] [--markdown summary.md]

Progress goes to stderr: a bar on a terminal, one line per run in a pipe.
Ctrl-C stops after the current run; what was measured is still summarised
and written (exit code 130).  A second Ctrl-C stops at once.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from engine.cli import STDOUT, add_json_option, take_model_from_json_option

EXIT_OK, EXIT_BAD_INPUT, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 2, 3, 130


# ----------------------------------------------------------------------------- progress

class Progress:
    """A progress bar on a terminal, plain lines in a pipe (both on stderr)."""

    def __init__(self, stream=None, label: str = ""):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label = label
        self.started = time.monotonic()
        self._last_width = 0

    def __call__(self, done: int, total: int, message: str) -> None:
        if self.tty:
            width = 28
            filled = int(width * done / total) if total else width
            elapsed = time.monotonic() - self.started
            eta = elapsed / done * (total - done) if done else 0.0
            line = (f"\r{self.label}[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                    f"{message}  {elapsed:.0f}s elapsed, ~{eta:.0f}s left")
            pad = max(0, self._last_width - len(line))
            self.stream.write(line + " " * pad)
            self._last_width = len(line)
            self.stream.flush()
        else:
            print(f"{self.label}{done}/{total} {message}", file=self.stream, flush=True)

    def finish(self) -> None:
        if self.tty and self._last_width:
            self.stream.write("\n")
            self.stream.flush()
            self._last_width = 0


class CtrlC:
    """First Ctrl-C sets `cancel` (stop after this run, keep what was measured); the second interrupts."""

    def __init__(self, unit: str = "run"):
        self.cancel = threading.Event()
        self.unit = unit  # what finishes before stopping: "run", "layer"
        self._previous = None

    def __enter__(self) -> "CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.cancel.is_set():
            raise KeyboardInterrupt
        self.cancel.set()
        print(f"\nlayerscope: stopping after the current {self.unit} (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ----------------------------------------------------------------------------- summary text

def _pct(value: float) -> str:
    return f"{value * 100:.1f} %"


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def profile_summary(profile, top: int = 10, names=None) -> str:
    """The text summary; `names`: node id -> readable label (engine.naming), from the profile when None."""
    if names is None:
        from engine.naming import layer_names_for_profile
        names = layer_names_for_profile(profile)
    lines = []
    target = profile.target
    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in (profile.settings.get("input_shapes") or {}).items())
    lines.append(f"Model       {profile.model_path} ({profile.model_format}){'; ' + shapes if shapes else ''}")
    threads = profile.settings.get("threads") or "auto"
    mode_text = {"exact": "exact (graph optimizations off, one timing per source node)",
                 "deployed": "deployed (optimizations on, fused kernels mapped to source nodes)"}
    if target.get("backend") == "coreml":
        # Core ML: what the figures are differs from ONNX Runtime's (docs/iphone.md).
        where = target.get("device") or target.get("chip") or "?"
        model_name = f" ({target['model_name']})" if target.get("model_name") else ""
        lines.append(f"Target      {target.get('name', '?')}: {where}{model_name}, {target.get('os', '?')}, "
                     f"{target.get('runtime', '?')}, compute units {target.get('compute_unit', '?')}")
        if target.get("load_ms") is not None:
            lines.append(f"Load        {_ms(target['load_ms'])} {target.get('load_kind', 'measured')}")
        units = ", ".join(target.get("compute_units") or ()) or "unknown"
        lines.append("Mode        deployed (Core ML: whole predictions measured; per-layer times attributed by the "
                     f"compute plan's cost weights; segments derived from prefix models; compute units "
                     f"{target.get('compute_units_kind') or 'unknown'}: {units})")
    elif target.get("name") == "android":
        # benchmark_model on a phone: its own summaries of the runs (docs/android.md).
        lines.append(f"Target      android: {target.get('device', '?')} ({target.get('serial', '?')}), "
                     f"{target.get('chip') or 'SoC unknown'}, {target.get('os', '?')}, {target.get('abi', '?')}, "
                     f"{target.get('runtime', '?')}, delegate {target.get('delegate', '?')}, threads {threads}")
        if target.get("init_ms") is not None:
            lines.append(f"Init        {_ms(target['init_ms'])} {target.get('init_kind', 'measured')}")
        lines.append("Mode        " + ("exact (builtin kernels: one measured time per operator)"
                                       if target.get("delegate") == "cpu" else
                                       "deployed (a delegate partition is measured whole, its operators' shares "
                                       "attributed by FLOPs; operators left to the builtin kernels measured)"))
    else:
        lines.append(f"Target      {target.get('name', '?')}: {target.get('chip', '?')}, {target.get('os', '?')}, "
                     f"{target.get('runtime', '?')}, threads {threads}")
        lines.append(f"Mode        {mode_text.get(profile.mode, profile.mode)}")
    runs = f"{profile.runs_completed} measured after {profile.settings.get('warmup', 0)} warm-up"
    if not profile.complete:
        runs += f" - INCOMPLETE ({profile.error or 'stopped'}; {profile.settings.get('runs')} asked)"
    lines.append(f"Runs        {runs}")
    e2e = profile.end_to_end
    if e2e is None:
        lines.append("End-to-end  no run completed")
        return "\n".join(lines)
    if e2e.statistic == "mean":  # a runtime's own summary (benchmark_model): mean, fastest and slowest run
        lines.append(f"End-to-end  {_ms(e2e.median_ms)} mean of {e2e.count} runs (min {e2e.p10_ms:.3f}, max "
                     f"{e2e.p90_ms:.3f}, CV {_pct(e2e.cv)}) {e2e.kind}, with the op profiler on; per-layer "
                     "figures below are means too")
    else:
        lines.append(f"End-to-end  {_ms(e2e.median_ms)} median (p10 {e2e.p10_ms:.3f}, p90 {e2e.p90_ms:.3f}, "
                     f"CV {_pct(e2e.cv)}) {e2e.kind}, plain runs")
    ratio_kinds = profile.ratio_kinds()
    if profile.profiler_overhead is not None and profile.profiled_end_to_end is not None:
        lines.append(f"Profiler    adds {_pct(profile.profiler_overhead)} "
                     f"(profiled runs {_ms(profile.profiled_end_to_end.median_ms)} median) "
                     f"{ratio_kinds['profiler_overhead']}")
    if profile.coverage is not None:
        statistic = "mean" if e2e.statistic == "mean" else "median"
        lines.append(f"Coverage    {profile.coverage:.2f} (sum of per-kernel {statistic}s / end-to-end {statistic}) "
                     f"{ratio_kinds['coverage']}")
    if profile.cpu_wait_share is not None:
        state = "busy" if profile.cpu_wait_share > 0.10 else "idle enough"
        lines.append(f"Machine     {state}: runs waited {_pct(profile.cpu_wait_share)} of their time for a CPU")
    total = profile.total_node_ms
    if profile.stage_times_ms:
        lines.append("")
        lines.append("Stages (share of node time)")
        for name, ms in profile.stage_times_ms.items():
            share = ms / total if total else 0.0
            lines.append(f"  {name:<12} {ms:9.3f} ms  {share * 100:5.1f} %  {profile.stage_kind(name)}")
    ranked = profile.top_nodes(top)
    if ranked:
        lines.append("")
        lines.append(f"Top {len(ranked)} layers")
        width = min(48, max(len(names.get(n.node_id, n.node_id)) for n in ranked))
        for index, node in enumerate(ranked, 1):
            share = node.time.median_ms / total if total else 0.0
            label = names.get(node.node_id, node.node_id)
            name = label if len(label) <= width else "..." + label[-(width - 3):]
            lines.append(f"  {index:2}. {name:<{width}} {node.op_type:<18} {node.stage:<10} "
                         f"{node.time.median_ms:8.3f} ms {share * 100:5.1f} %  {node.kind:<10} "
                         f"CV {node.time.cv * 100:4.1f} %")
    ops = profile.top_op_types(min(top, 8))
    if ops:
        counts: dict[str, int] = {}
        for node in profile.nodes.values():
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        lines.append("")
        lines.append("Top op types")
        for op, ms in ops:
            share = ms / total if total else 0.0
            lines.append(f"  {op:<22} {ms:9.3f} ms  {share * 100:5.1f} %  ({counts.get(op, 0)} nodes)  "
                         f"{profile.op_type_kind(op)}")
    if profile.hints:
        lines.append("")
        lines.append("Hints")
        for hint in profile.hints:
            lines.append(f"  [{hint.get('severity', '?')}] ({hint.get('kind', 'unknown')}) {hint.get('message', '')}")
    for warning in profile.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def sweep_summary(rows) -> str:
    kinds = "/".join(sorted({str(row.get("kind") or "not run") for row in rows}))
    lines = ["", f"Sweep (end-to-end, {kinds}; MACs estimated)",
             f"  {'setting':<14} {'median':>11} {'p10':>11} {'p90':>11} {'MACs':>14}"]
    for row in rows:
        setting = f"{row['series']} {row['setting']}" if row.get("series") else row["setting"]
        macs = row.get("macs")
        lines.append(f"  {setting:<14} {_ms(row.get('median_ms')):>11} {_ms(row.get('p10_ms')):>11} "
                     f"{_ms(row.get('p90_ms')):>11} {'-' if macs is None else f'{macs:,}':>14}"
                     + ("" if row.get("complete", True) else
                        f"  not run: {row['error']}" if row.get("runs") == 0 and row.get("error") else "  incomplete"))
    if any(row.get("series") == "CPU_AND_GPU" for row in rows) and any(row.get("series") == "CPU_ONLY" for row in rows):
        from engine.sweep import crossover
        size = crossover(rows)
        lines.append(f"  CPU_AND_GPU beats CPU_ONLY from {size} on" if size
                     else "  CPU_AND_GPU beats CPU_ONLY at none of these settings")
    return "\n".join(lines)


def compare_summary(comparison, top: int = 10, names=None) -> str:
    names = names or {}
    lines = [f"Compare     a = {comparison.a_label}", f"            b = {comparison.b_label}"]
    if comparison.a_figures or comparison.b_figures:
        lines += [f"Figures     a: {comparison.a_figures}", f"            b: {comparison.b_figures}"]
    e2e = comparison.end_to_end
    if e2e is not None:
        lines.append(f"End-to-end  {_ms(e2e.a_ms)} -> {_ms(e2e.b_ms)}  b/a {e2e.ratio:.2f}" if e2e.ratio
                     else f"End-to-end  {_ms(e2e.a_ms)} -> {_ms(e2e.b_ms)}")
    if comparison.stages:
        lines.append("")
        lines.append("Stages")
        for change in comparison.stages:
            ratio = "-" if change.ratio is None else f"{change.ratio:.2f}"
            lines.append(f"  {change.key:<12} {change.a_ms:9.3f} ms -> {change.b_ms:9.3f} ms  b/a {ratio}  "
                         f"{change.kind}")
    changes = comparison.top_changes(top)
    if changes:
        lines.append("")
        lines.append(f"Top {len(changes)} changed layers (by time difference)")
        width = min(48, max(len(names.get(c.key, c.key)) for c in changes))
        for change in changes:
            ratio = "-" if change.ratio is None else f"{change.ratio:.2f}"
            label = names.get(change.key, change.key)
            name = label if len(label) <= width else "..." + label[-(width - 3):]
            lines.append(f"  {name:<{width}} {change.op_type:<16} {change.a_ms:8.3f} -> {change.b_ms:8.3f} ms  "
                         f"b/a {ratio}  {change.kind}")
    lines.append("")
    lines.append(f"{len(comparison.faster)} layer(s) faster and {len(comparison.slower)} slower by more than "
                 f"{comparison.threshold * 100:.0f} %")
    for warning in comparison.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- commands

def _with_hints(profile, analysis):
    try:
        from engine.hints import find_hints
    except ImportError:
        return profile
    hints = []
    for hint in find_hints(profile, analysis):
        if isinstance(hint, dict):
            hints.append(hint)
        elif hasattr(hint, "to_json_dict"):
            hints.append(hint.to_json_dict())
        else:
            import dataclasses
            hints.append(dataclasses.asdict(hint))
    return profile.with_hints(hints)


def _write_outputs(args, profile, analysis, sweep=None) -> list[str]:
    written = []
    if args.json == STDOUT:
        print(profile.to_json())
    elif args.json:
        profile.save_json(args.json)
        written.append(args.json)
    wanted = [(args.report, "write_html"), (args.csv, "write_csv"), (args.trace, "write_chrome_trace"),
              (args.model_explorer, "write_model_explorer")]
    if any(path for path, _ in wanted):
        try:
            import engine.report as report
        except ImportError as exc:
            from engine.cli import CliError
            raise CliError(f"exports are not available in this build ({exc})")
        for path, function in wanted:
            if not path:
                continue
            if function == "write_html":
                from engine.convert import report_blockers  # "Cannot run on Core ML: N nodes"
                report.write_html(profile, analysis, path, sweep=sweep,
                                  blockers=report_blockers(profile.model_path, profile.settings.get("input_shapes")))
            elif function == "write_chrome_trace":
                report.write_chrome_trace(profile, path)
            else:
                getattr(report, function)(profile, analysis, path)
            written.append(path)
    return written


def _compute_units_option(args: argparse.Namespace) -> list[str]:
    from engine.sweep import COREML_UNITS
    chosen = [u.upper() for u in (args.compute_units or [])]
    return list(COREML_UNITS) if chosen == ["EACH"] else chosen


def cmd_profile(args: argparse.Namespace) -> int:
    from engine.cli import CliError, parse_shape_option, remember_team
    from engine.profile import MODE_DEPLOYED, MODE_EXACT
    from engine.sweep import model_for_setting, parse_size, sweep_alpha, sweep_sizes
    from engine.targets import ProfileSettings, get_target, is_coreml_target

    take_model_from_json_option(args)
    path = Path(args.model) if args.model else _default_model()
    sizes = [parse_size(s) for s in (args.size or [])]
    alphas = list(args.alpha or [])
    remember_team(args)
    # Core ML has only a deployed mode (it compiles and fuses the whole model): the default there.
    mode = args.mode or (MODE_DEPLOYED if is_coreml_target(args.target) else MODE_EXACT)
    settings = ProfileSettings(mode=mode, runs=args.runs, warmup=args.warmup, threads=args.threads,
                               inputs=args.inputs, seed=args.seed,
                               input_shapes=parse_shape_option(args.shape),
                               ignore_memory_check=args.ignore_memory_check)
    if len(sizes) > 1 and len(alphas) > 1:
        raise CliError("sweep either sizes or alphas, not both at once")
    units = _compute_units_option(args)
    if units and not is_coreml_target(args.target):
        raise CliError("--compute-units sweeps Core ML's settings: give a Core ML target (iphone:NAME, or "
                       "ws://MAC:7878?device=NAME or ?backend=coreml)")
    progress = Progress()
    sweep_rows = None
    other_runs: dict = {}  # android: the other delegates' profiles
    with CtrlC() as ctrl_c:
        if units:
            from engine.sweep import sweep_compute_units
            kept = []
            sweep_rows = sweep_compute_units(path, args.target, units, sizes, settings, progress=progress,
                                             cancel=ctrl_c.cancel, keep_profiles=kept,
                                             target_factory=lambda address: get_target(address, team=args.team))
            progress.finish()
            if not kept:
                print("layerscope: interrupted before any setting was measured", file=sys.stderr)
                return EXIT_INTERRUPTED
            profile, analysis = kept[-1]
        elif len(sizes) > 1 or len(alphas) > 1:
            kept: list = []
            # The sweep runs where it was asked to: a target other than this machine's CPU reference is
            # made here and handed over (the sweep would otherwise make its own, here).
            sweep_target = None if args.target == "cpu" else get_target(
                args.target, team=args.team, model_path=path, **_android_options(args))
            try:
                if len(sizes) > 1:
                    sweep_rows = sweep_sizes(path, sizes, settings, target=sweep_target, progress=progress,
                                             cancel=ctrl_c.cancel, keep_profiles=kept)
                else:
                    sweep_rows = sweep_alpha(path, alphas, settings, size=sizes[0] if sizes else None,
                                             target=sweep_target, progress=progress, cancel=ctrl_c.cancel,
                                             keep_profiles=kept)
            finally:
                if sweep_target is not None:
                    sweep_target.close()
            progress.finish()
            if not kept:
                print("layerscope: interrupted before any setting was measured", file=sys.stderr)
                return EXIT_INTERRUPTED
            profile, analysis = kept[0]
        else:
            import tempfile, shutil
            workdir = Path(tempfile.mkdtemp(prefix="layerscope-profile-"))
            try:
                model_file, size = model_for_setting(path, workdir, size=sizes[0] if sizes else None,
                                                     alpha=alphas[0] if alphas else None)
                if size is not None:
                    settings = settings.replace(size=size)
                target = get_target(args.target, team=args.team, model_path=model_file, **_android_options(args))
                try:
                    target.prepare(model_file, settings)
                    profile = target.profile(settings, progress, ctrl_c.cancel)
                    analysis = target.analysis
                    other_runs = {k: v for k, v in (getattr(target, "profiles", None) or {}).items()
                                  if v is not profile}
                finally:
                    progress.finish()
                    target.close()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            if model_file != path:  # a regenerated sample: name the file the person gave, and the setting
                from dataclasses import replace
                profile = replace(profile, model_path=str(path))
    profile = _with_hints(profile, analysis)
    written = _write_outputs(args, profile, analysis, sweep=sweep_rows)
    written += _write_other_runs(args, other_runs if not sweep_rows else {})
    from engine.naming import layer_names
    names = layer_names(analysis)
    if args.markdown:
        from engine.report.markdown import profile_markdown
        written.append(_write_text(args.markdown, profile_markdown(profile, names, top=args.top)))
    summary_stream = sys.stderr if args.json == STDOUT else sys.stdout  # stdout carries the JSON
    print(profile_summary(profile, top=args.top, names=names), file=summary_stream)
    from engine.grouping import repeated_block_lines
    for line in repeated_block_lines(analysis, profile):
        print(f"repeated blocks: {line}", file=summary_stream)
    if sweep_rows:
        print(sweep_summary(sweep_rows), file=summary_stream)
    if not sweep_rows and other_runs:
        print(delegate_summary([profile, *other_runs.values()]), file=summary_stream)
    for item in written:
        print(f"wrote {item}", file=sys.stderr)
    if not profile.complete:
        if profile.error in ("cancelled", "interrupted"):
            print(f"layerscope: interrupted after {profile.runs_completed} run(s); the figures above and the "
                  "files written hold those runs", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"layerscope: {path}: profile incomplete: {profile.error}; {profile.runs_completed} run(s) kept",
              file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


def _android_options(args: argparse.Namespace) -> dict:
    """The android target's options, only for android targets (others take none)."""
    if args.target != "android" and not args.target.startswith("android:"):
        if args.benchmark_model or args.android_delegates:
            from engine.cli import CliError
            raise CliError("--benchmark-model and --android-delegates are options of android targets "
                           "(--target android:SERIAL)")
        return {}
    return {"benchmark_model": args.benchmark_model, "delegates": args.android_delegates}


def _write_other_runs(args, others) -> list[str]:
    """The JSON of every other delegate's run beside --json FILE, as FILE-STEM.DELEGATE.json."""
    if not others or not args.json or args.json == STDOUT:
        return []
    path = Path(args.json)
    written = []
    for delegate, other in others.items():
        target = path.with_name(f"{path.stem}.{delegate}{path.suffix or '.json'}")
        other.save_json(target)
        written.append(str(target))
    return written


def delegate_summary(profiles) -> str:
    """One line per delegate run of an android profile: end-to-end mean, runs, coverage, where operators ran."""
    lines = ["", "Delegates (benchmark_model on the phone; end-to-end mean of the measured runs, op profiler on)",
             f"  {'delegate':<9} {'end-to-end':>12} {'runs':>5} {'coverage':>9}  operators"]
    for profile in profiles:
        e2e = profile.end_to_end
        units: dict[str, int] = {}
        for node in profile.nodes.values():
            units[node.compute_unit] = units.get(node.compute_unit, 0) + 1
        where = ", ".join(f"{count} on {unit}" for unit, count in sorted(units.items())) or "-"
        coverage = "-" if profile.coverage is None else _pct(profile.coverage)
        state = "" if profile.complete else f"  ({profile.error})"
        lines.append(f"  {profile.target.get('delegate', '?'):<9} {_ms(e2e.median_ms if e2e else None):>12} "
                     f"{profile.runs_completed:>5} {coverage:>9}  {where}{state}")
    return "\n".join(lines)


def _write_text(path, text: str) -> str:
    from engine.cli import CliError
    from engine.files import write_text_atomically
    try:
        write_text_atomically(Path(path), text)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}")
    return str(path)


def analysis_for_profile(profile, model: Optional[str] = None, profile_name: str = "the profile"):
    """(static analysis of the model a profile was made of, at its input shapes; a note when the shapes are
    not the profiled ones, else "").  (None, "") when the file is not there.  `model` overrides the path
    the profile names (a profile made on another machine)."""
    from engine.analysis import analyze
    from engine.ir import ModelLoadError
    from importers import open_model
    model_path = Path(model or profile.model_path)
    if not model_path.is_file() and not model_path.is_dir():
        return None, ""
    # The report's static figures (MACs, bytes, stages) must be those of the shapes the profile ran at.
    shapes = {k: list(v) for k, v in (profile.settings.get("input_shapes") or {}).items()}
    note = "" if shapes else (f"{profile_name} does not record its input shapes: the report's static figures "
                              "(MACs, bytes) are at the model's own shapes, which may not be the profiled ones")
    try:
        return analyze(open_model(model_path, input_shapes=shapes or None)), note
    except ModelLoadError as exc:
        note = (f"the model cannot be analysed at the input shapes of {profile_name} ({exc.problem}): the report's "
                "static figures (MACs, bytes) are at the model's own shapes, not the profiled ones")
        return analyze(open_model(model_path)), note


def _names(profile, analysis):
    from engine.naming import layer_names, layer_names_for_profile
    return layer_names(analysis) if analysis is not None else layer_names_for_profile(profile)


def cmd_compare(args: argparse.Namespace) -> int:
    from engine.cli import CliError
    from engine.compare import compare_profiles
    from engine.profile import Profile

    a = Profile.load_json(args.a)
    b = Profile.load_json(args.b)
    comparison = compare_profiles(a, b, threshold=args.threshold)
    from engine.ir import ModelLoadError
    try:
        analysis, note = analysis_for_profile(b, profile_name=args.b)  # for the layers' names, and the graph
    except ModelLoadError:
        if args.report:
            raise
        analysis, note = None, ""
    names = _names(b, analysis)
    print(compare_summary(comparison, top=args.top, names=names), file=sys.stderr if args.json == STDOUT else sys.stdout)
    written = []
    if args.json == STDOUT:
        import json
        print(json.dumps(comparison.to_json_dict(), indent=1))
    elif args.json:
        import json
        written.append(_write_text(args.json, json.dumps(comparison.to_json_dict(), indent=1)))
    if args.markdown:
        from engine.report.markdown import compare_markdown
        written.append(_write_text(args.markdown, compare_markdown(a, b, comparison, names, top=args.top)))
    if args.report:
        from engine.report import write_html
        if analysis is None:
            raise CliError(f"--report needs the model file {b.model_path} (named in {args.b}), which is not there")
        if note:
            from dataclasses import replace
            print(f"layerscope: warning: {note}", file=sys.stderr)
            b = replace(b, warnings=tuple(b.warnings) + (note,))
        write_html(b, analysis, args.report, compare=comparison.to_json_dict())
        written.append(args.report)
    for item in written:
        print(f"wrote {item}", file=sys.stderr)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """One report of several saved profiles of the same model, side by side (the first is the primary)."""
    from engine.cli import CliError
    from engine.profile import Profile
    from engine.report import write_html

    profiles = [Profile.load_json(path) for path in args.profiles]
    models = {Path(p.model_path).name for p in profiles}
    warnings = []
    if len(models) > 1 and not args.model:
        warnings.append(f"the profiles name different model files ({', '.join(sorted(models))}); layers are "
                        "matched by id and the graph is of the first")
    analysis, note = analysis_for_profile(profiles[0], args.model, profile_name=args.profiles[0])
    if note:
        from dataclasses import replace
        warnings.append(note)
        profiles[0] = replace(profiles[0], warnings=tuple(profiles[0].warnings) + (note,))
    if analysis is None:
        if args.model:
            raise CliError(f"--model {args.model}: no such file")
        warnings.append(f"the model file {profiles[0].model_path} is not here: the report has no graph and no "
                        "static figures (give it with --model)")
    names = _names(profiles[0], analysis)
    written = []
    if args.output:
        write_html(profiles, analysis, args.output)
        written.append(args.output)
    if args.markdown:
        from engine.report.markdown import profile_markdown
        written.append(_write_text(args.markdown, profile_markdown(profiles, names, top=args.top)))
    if not written:
        raise CliError("nothing to write: give -o FILE.html and/or --markdown FILE.md")
    for warning in warnings:
        print(f"layerscope: warning: {warning}", file=sys.stderr)
    for item in written:
        print(f"wrote {item}", file=sys.stderr)
    return EXIT_OK


def _default_model() -> Path:
    from engine.sample_files import default_sample_path
    return default_sample_path()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def add_profile_commands(sub) -> None:
    profile = sub.add_parser("profile", help="run a model and measure every layer (CPU reference, agent, iPhone "
                                             "or Android phone)",
                             description="Run a model on a target and measure every layer. "
                                         "Ctrl-C stops after the current run and still writes what was measured.")
    profile.add_argument("model", nargs="?", help="model file (.onnx, or .tflite: LiteRT on this CPU or on an "
                                                  "Android phone); default: the bundled MobileUNet sample")
    profile.add_argument("--target", default="cpu", metavar="cpu|ws://HOST:PORT|iphone:NAME|android[:SERIAL]",
                         help="where to run: cpu (ONNX Runtime here, LiteRT for a .tflite; the default), an agent's "
                              "address "
                              "(ws://HOST:PORT; ?device=PHONE for an iPhone of a Mac agent), iphone:NAME-or-UDID "
                              "for an iPhone connected to this Mac (docs/iphone.md), or android:SERIAL for an "
                              "Android phone over adb ('android' alone: the only one connected; docs/android.md)")
    profile.add_argument("--benchmark-model", metavar="PATH",
                         help="android targets: Google's benchmark_model built for the phone (android_aarch64; "
                              "default: $LAYERSCOPE_BENCHMARK_MODEL; docs/android.md says where it comes from)")
    profile.add_argument("--android-delegates", metavar="LIST", default=None,
                         help="android targets: comma-separated runs among cpu (builtin kernels, one time per "
                              "operator), xnnpack (LiteRT's default CPU path) and gpu (default xnnpack)")
    profile.add_argument("--mode", default=None, choices=["exact", "deployed"],
                         help="exact: optimizations off, one timing per node; deployed: optimizations on, "
                              "fused kernels mapped back to nodes (default exact; deployed on Core ML targets, "
                              "which have no exact mode)")
    profile.add_argument("--runs", type=_positive_int, default=20, help="measured runs (default 20)")
    profile.add_argument("--warmup", type=_positive_int, default=3, help="warm-up runs (default 3)")
    profile.add_argument("--threads", type=_positive_int, default=1,
                         help="intra-op threads (default 1: stable, attributable per-layer times; "
                              "0 lets the runtime use one per physical core)")
    profile.add_argument("--size", nargs="+", metavar="HxW",
                         help="input height x width for image inputs; several sizes run a sweep")
    profile.add_argument("--alpha", nargs="+", type=float, metavar="A",
                         help="width multiplier of a generated sample; several run a sweep")
    profile.add_argument("--compute-units", nargs="+", metavar="SETTING",
                         help="Core ML targets: profile under each MLComputeUnits setting (CPU_ONLY CPU_AND_GPU "
                              "CPU_AND_NE ALL, or 'each' for all four); with several --size, a sweep per setting")
    profile.add_argument("--shape", action="append", metavar="NAME=DIMS",
                         help="full shape of an input with free dimensions, e.g. input=1x3x224x224")
    profile.add_argument("--inputs", default="random", metavar="random|zeros|FILE.npz",
                         help="input values: random (seeded), zeros, or arrays named after the inputs in a .npz")
    profile.add_argument("--seed", type=int, default=0, help="seed of random inputs (default 0)")
    profile.add_argument("--ignore-memory-check", action="store_true",
                         help="CPU reference: read the weights kept outside the model file even when they exceed "
                              "the memory free on this computer (refused otherwise, before any is read)")
    add_json_option(profile, "the layerscope.profile/1 JSON")
    profile.add_argument("--report", metavar="FILE", help="write a self-contained HTML report")
    profile.add_argument("--csv", metavar="FILE", help="write one CSV row per layer")
    profile.add_argument("--trace", metavar="FILE", help="write Chrome trace-event JSON (opens in Perfetto)")
    profile.add_argument("--model-explorer", metavar="FILE", help="write Model Explorer node data JSON")
    profile.add_argument("--markdown", metavar="FILE", help="write a compact Markdown summary (for a code review)")
    profile.add_argument("--top", type=int, default=10, help="how many slowest layers to list (default 10)")
    from engine.cli import add_team_options
    add_team_options(profile)
    profile.set_defaults(func=cmd_profile)

    compare = sub.add_parser("compare", help="compare two profiles (JSON) of the same model")
    compare.add_argument("a", help="profile JSON (the reference)")
    compare.add_argument("b", help="profile JSON (ratios are b / a)")
    compare.add_argument("--report", metavar="FILE", help="write an HTML report of b with the comparison")
    compare.add_argument("--json", metavar="FILE", help="write the comparison as JSON to FILE ('-': stdout, "
                                                        "the text summary then goes to stderr)")
    compare.add_argument("--markdown", metavar="FILE",
                         help="write what got slower or faster beyond the noise as Markdown (for a code review)")
    compare.add_argument("--threshold", type=float, default=0.10,
                         help="relative change that counts as faster/slower (default 0.10)")
    compare.add_argument("--top", type=int, default=10, help="how many changed layers to list")
    compare.set_defaults(func=cmd_compare)

    report = sub.add_parser("report", help="one HTML report (and/or Markdown) of saved profiles, side by side",
                            description="Build a report from saved profiles (layerscope.profile/1 JSON) of the "
                                        "same model: CPU reference, devices, compute units, input sizes. The "
                                        "first profile is the primary one (hints, stages, graph).")
    report.add_argument("profiles", nargs="+", metavar="PROFILE.json")
    report.add_argument("-o", "--output", metavar="FILE.html", help="write the HTML report")
    report.add_argument("--markdown", metavar="FILE", help="write a compact Markdown summary")
    report.add_argument("--model", metavar="MODEL",
                        help="the model file, when it is not where the profiles say (e.g. made on another machine)")
    report.add_argument("--top", type=int, default=10, help="how many slowest layers to list (default 10)")
    report.set_defaults(func=cmd_report)
