"""An Android phone connected over adb as a target: `--target android:SERIAL` (or `android`).

    target = AndroidTarget("android:R5CT12345", benchmark_model="~/benchmark_model",
                           delegates=("cpu", "xnnpack", "gpu"))
    target.prepare("model.tflite", settings)     # checks the binary against the phone's ABI, pushes both
    profile = target.profile(settings, progress, cancel)   # one benchmark_model run per delegate
    target.profiles                              # delegate -> Profile, for every run that finished

Each delegate is one benchmark_model process with op profiling on, writing a
`BenchmarkProfilingData` proto (schema: ai-edge-litert's `profiling_info_pb2`) and, where the
binary supports it, the `ModelRuntimeDetails` of the interpreter (`model_runtime_info_pb2`):
which delegate node replaced which operators.  What each figure is (docs/android.md):

- an operator's time, where the runtime profiled it by operator index (row name ending in
  `:<index>`; every operator on the CPU's builtin kernels, and operators a delegate left to
  them): `measured`, the runtime's mean over the runs (statistic "mean", min and max beside);
- a delegate partition (XNNPACK's, the GPU's): one group `measured` as a whole, covering the
  operators the runtime info says it replaced; each operator's share `attributed` by FLOPs;
  the delegate's own kernel rows (XNNPACK numbers them itself) are not mapped to operators;
- the compute unit of each operator (CPU, GPU): `measured` (the runtime reported the delegate);
- end-to-end: the mean of the measured runs as benchmark_model reports it, with the op
  profiler on (both come from one process).

Query keys: ``delegates`` (cpu,xnnpack,gpu; default xnnpack), ``benchmark_model`` (path).
"""
from __future__ import annotations

import re
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import parse_qs, unquote

from engine.profile import (ATTRIBUTED, MEASURED, MODE_DEPLOYED, MODE_EXACT, NodeTiming, Profile, TimingGroup,
                            TimingStats)
from engine.targets.settings import ProfileSettings, ProgressCallback, TargetError

__all__ = ["AndroidTarget", "ANDROID_SCHEME", "parse_android_address", "parse_delegates", "profile_from_benchmark"]

ANDROID_SCHEME = "android"
DEFAULT_DELEGATES = ("xnnpack",)
MODEL_NAME = "model.tflite"
BINARY_NAME = "benchmark_model"
# Progress steps of one delegate's run, in the order benchmark_model reaches them.
PHASES = ("starting", "model initialised", "warm-up runs", "measured runs", "results copied")


def parse_android_address(address: str) -> tuple[Optional[str], dict[str, str]]:
    """"android:SERIAL?delegates=cpu,gpu" -> ("SERIAL", {...}); "android" -> (None, {})."""
    if address != ANDROID_SCHEME and not address.startswith(ANDROID_SCHEME + ":"):
        raise TargetError(f"{address!r} is not an android address (android or android:SERIAL)")
    rest = address[len(ANDROID_SCHEME):].lstrip(":").lstrip("/")
    serial, _, query = rest.partition("?")
    serial = unquote(serial).strip() or None
    return serial, {key: values[0] for key, values in parse_qs(query).items() if values}


def parse_delegates(text) -> tuple[str, ...]:
    """"cpu,xnnpack" or a sequence -> ("cpu", "xnnpack"), checked, in the order given, without repeats."""
    from engine.bridge.android import DELEGATES
    items = text.split(",") if isinstance(text, str) else list(text)
    chosen: list[str] = []
    for item in (str(i).strip().lower() for i in items):
        if not item:
            continue
        if item not in DELEGATES:
            raise TargetError(f"unknown delegate {item!r}: choose from {', '.join(DELEGATES)} (cpu: the builtin "
                              "kernels, one time per operator; xnnpack: LiteRT's default CPU path; gpu: the GPU "
                              "delegate)")
        if item not in chosen:
            chosen.append(item)
    if not chosen:
        raise TargetError(f"no delegate given: choose from {', '.join(DELEGATES)}")
    return tuple(chosen)


# ============================================================================ proto -> Profile

def _operator_id(subgraph: int, index: int) -> str:
    from importers.tflite import operator_node_id
    return operator_node_id(subgraph, index)


def _ms_stats(stat, runs: int) -> TimingStats:
    """OpProfilingStat (microseconds) -> a measured summary in milliseconds."""
    return TimingStats.from_summary(stat.avg / 1000.0, stat.stddev / 1000.0, stat.min / 1000.0, stat.max / 1000.0,
                                    max(1, int(stat.count) or runs), MEASURED)


def _runtime_nodes(runtime_info) -> dict[int, dict]:
    """subgraph -> {"operators": count, "delegates": {node index: (name, replaced operator indexes)}}."""
    found: dict[int, dict] = {}
    for subgraph in runtime_info.subgraphs if runtime_info is not None else ():
        delegates = {}
        operators = 0
        for node in subgraph.nodes:
            if node.HasField("delegate_node_details"):
                details = node.delegate_node_details
                delegates[node.id] = (details.delegate_name or node.name,
                                      tuple(details.tflite_node_ids_replaced))
            else:
                operators += 1
        found[subgraph.subgraph_id] = {"operators": operators, "delegates": delegates,
                                       "names": {n.id: n.name for n in subgraph.nodes}}
    return found


def _unit_of(delegate_name: str) -> str:
    return "GPU" if "gpu" in delegate_name.lower() else "CPU"


def profile_from_benchmark(*, delegate: str, model_path: str, profiling_data: Optional[bytes],
                           runtime_info: Optional[bytes], summary, settings: Mapping[str, Any],
                           target: Mapping[str, Any], analysis=None, warnings: Sequence[str] = ()) -> Profile:
    """A Profile of one benchmark_model run from what it wrote.  Pure: no adb, no phone.

    analysis (engine.analysis of the .tflite, optional): op types, stages, output bytes, and the
    FLOPs that split a delegate partition's time over its operators (evenly without it)."""
    try:
        from ai_edge_litert import model_runtime_info_pb2, profiling_info_pb2
    except ImportError:
        raise TargetError("reading benchmark_model's profile needs ai-edge-litert (its profiling_info schema): "
                          "pip install 'layerscope[android]'") from None
    warnings = list(warnings)
    data = profiling_info_pb2.BenchmarkProfilingData()
    if profiling_data:
        try:
            data.ParseFromString(profiling_data)
        except Exception as exc:
            raise TargetError(f"benchmark_model's profile of the {delegate} run is not a BenchmarkProfilingData "
                              f"proto ({type(exc).__name__}: {exc})") from None
    details = None
    if runtime_info:
        details = model_runtime_info_pb2.ModelRuntimeDetails()
        try:
            details.ParseFromString(runtime_info)
        except Exception as exc:
            warnings.append(f"the runtime info of the {delegate} run could not be read ({exc}); which delegate ran "
                            "each operator is unknown")
            details = None
    runtime = _runtime_nodes(details)
    measured = summary.measured
    runs = int(measured["count"]) if measured else 0
    analysis_nodes = getattr(analysis, "nodes", None) or {}
    order = {node_id: metrics.order for node_id, metrics in analysis_nodes.items()}

    def op_type(node_id: str, subgraph: int, index: int, fallback: str) -> str:
        if node_id in analysis_nodes:
            return analysis_nodes[node_id].op_type
        return runtime.get(subgraph, {}).get("names", {}).get(index) or fallback.split("/")[0] or "?"

    def timing(node_id, subgraph, index, fallback, stats, group_id, kind, unit) -> NodeTiming:
        metrics = analysis_nodes.get(node_id)
        return NodeTiming(node_id, op_type(node_id, subgraph, index, fallback), metrics.stage if metrics else "",
                          stats, group_id, kind, metrics.output_bytes if metrics else None, None, unit, MEASURED)

    groups: list[TimingGroup] = []
    nodes: list[NodeTiming] = []
    internal_rows = 0
    unmapped_delegates = []
    for subgraph_data in data.runtime_profile.subgraph_profiles:
        subgraph = subgraph_data.subgraph_index
        info = runtime.get(subgraph, {})
        delegate_nodes = info.get("delegates", {})
        operator_count = info.get("operators")
        for row in subgraph_data.per_op_profiles:
            match = re.search(r":(\d+)$", row.name)
            if row.name.startswith("Delegate/"):
                internal_rows += 1  # a delegate's own kernels, numbered by the delegate
                continue
            if match is None:  # a runtime event that is no operator ("AllocateTensors/0"): not a layer's time
                continue
            index = int(match.group(1))
            stats = _ms_stats(row.inference_microseconds, runs)
            is_delegate = index in delegate_nodes or (operator_count is not None and index >= operator_count) \
                or (details is None and "delegate" in row.node_type.lower())
            if not is_delegate:
                node_id = _operator_id(subgraph, index)
                groups.append(TimingGroup(node_id, row.node_type, (node_id,), stats, row.node_type.split("/")[0]))
                nodes.append(timing(node_id, subgraph, index, row.node_type, stats, node_id, MEASURED, "CPU"))
                continue
            name, replaced = delegate_nodes.get(index, (row.node_type, ()))
            group_id = f"{name}:{_operator_id(subgraph, index)}"
            members = tuple(_operator_id(subgraph, i) for i in replaced)
            if not members:
                unmapped_delegates.append(name)
            groups.append(TimingGroup(group_id, name, members, stats, "delegate"))
            weights = [float(getattr(analysis_nodes.get(m), "flops", 0) or 0) for m in members]
            if not sum(weights):
                weights = [1.0] * len(members)
            for member, operator_index, weight in zip(members, replaced, weights):
                kind = MEASURED if len(members) == 1 else ATTRIBUTED
                nodes.append(timing(member, subgraph, operator_index, "", stats.scaled(weight / sum(weights), kind),
                                    group_id, kind, _unit_of(name)))
    if internal_rows:
        warnings.append(f"the delegate reported {internal_rows} kernel time(s) of its own, numbered by the delegate "
                        "and not by the model's operators: they are not painted; each partition's measured time is "
                        "split over its operators by FLOPs")
    if unmapped_delegates:
        warnings.append(f"{len(unmapped_delegates)} delegate partition(s) ({', '.join(sorted(set(unmapped_delegates)))}) "
                        "ran without runtime info from this benchmark_model, so the operators they cover are "
                        "unknown: their time counts in the coverage, not on the graph (a newer benchmark_model "
                        "writes --model_runtime_info_output_file)")
    if delegate == "gpu" and not any(g.kernel_op == "delegate" and _unit_of(g.kernel) == "GPU" for g in groups) \
            and groups:
        warnings.append("the GPU delegate took no operator: every operator ran on the CPU")
    nodes.sort(key=lambda n: order.get(n.node_id, len(order)))
    timed = {n.node_id for n in nodes}
    untimed = [node_id for node_id, metrics in analysis_nodes.items()
               if node_id not in timed and not metrics.is_constant and not node_id.startswith("input")]
    end_to_end = TimingStats.from_summary(measured["avg_us"] / 1000.0, measured["std_us"] / 1000.0,
                                          measured["min_us"] / 1000.0, measured["max_us"] / 1000.0,
                                          runs) if measured else None
    stages = [s.name for s in getattr(analysis, "stages", ())]
    return Profile.build(model_path=model_path, model_format="tflite", target=dict(target),
                         mode=MODE_EXACT if delegate == "cpu" else MODE_DEPLOYED, settings=dict(settings),
                         end_to_end_samples=(), profiled_samples=(), groups=groups, nodes=nodes,
                         runs_completed=runs, complete=bool(measured), stage_order=stages,
                         untimed_node_ids=untimed if analysis_nodes else (), warnings=warnings,
                         end_to_end_summary=end_to_end)


def _empty_profile(model_path: str, delegate: str, target: Mapping, settings: Mapping, error: str) -> Profile:
    return Profile.build(model_path=model_path, model_format="tflite", target=dict(target),
                         mode=MODE_EXACT if delegate == "cpu" else MODE_DEPLOYED, settings=dict(settings),
                         end_to_end_samples=(), profiled_samples=(), groups=(), nodes=(), runs_completed=0,
                         complete=False, error=error)


# ============================================================================ the target

class AndroidTarget:
    """A phone over adb running Google's benchmark_model, as a Target.  One profile at a time."""

    name = "android"

    def __init__(self, address: str = ANDROID_SCHEME, benchmark_model: Optional[str] = None,
                 delegates=None):
        self.serial, query = parse_android_address(address)
        self.delegates = parse_delegates(delegates or query.get("delegates") or DEFAULT_DELEGATES)
        self.binary_option = benchmark_model or query.get("benchmark_model")
        self.profiles: dict[str, Profile] = {}
        self._phone = None
        self._binary: Optional[Path] = None
        self._model: Optional[Path] = None
        self._settings: Optional[ProfileSettings] = None
        self._analysis = None

    # -- preparing --------------------------------------------------------------------------

    def prepare(self, model_path, settings: Optional[ProfileSettings] = None) -> None:
        from engine.bridge.android import DEVICE_DIR, benchmark_binary, elf_abi, open_android_phone
        path = Path(model_path)
        if not path.exists():
            from engine.ir import ModelLoadError
            raise ModelLoadError(str(path), "no such file or directory")
        with open(path, "rb") as handle:
            head = handle.read(8)
        if path.suffix.lower() != ".tflite" and head[4:8] != b"TFL3":
            raise TargetError(f"{path.name}: android targets run LiteRT models (.tflite) with benchmark_model")
        if settings is not None and settings.size is not None:
            # benchmark_model takes whole shapes (--input_layer_shape), not a height and width
            raise TargetError(f"--size {settings.size[0]}x{settings.size[1]}: android targets run the model at the "
                              "shapes stored in it or given whole with --shape NAME=DIMS (passed to benchmark_model "
                              "as --input_layer_shape); the size and sweeps run on the CPU reference (--target cpu)")
        binary = benchmark_binary(self.binary_option)
        phone = open_android_phone(self.serial)
        abi = elf_abi(binary)
        if phone.entry["abilist"] and abi not in phone.entry["abilist"]:
            raise TargetError(f"{binary} is built for {abi}, but {phone.name} runs "
                              f"{', '.join(phone.entry['abilist'])}: use the android_aarch64 build of benchmark_model")
        phone.shell(f"mkdir -p {DEVICE_DIR}")
        phone.push(binary, f"{DEVICE_DIR}/{BINARY_NAME}", mode=0o755)
        phone.shell(f"chmod 755 {DEVICE_DIR}/{BINARY_NAME}")
        phone.push(path, f"{DEVICE_DIR}/{MODEL_NAME}")
        self._phone, self._binary, self._model = phone, binary, path
        self._settings = settings or ProfileSettings(mode=MODE_DEPLOYED)
        self._analysis = None

    # -- profiling --------------------------------------------------------------------------

    def _arguments(self, delegate: str, settings: ProfileSettings) -> list[str]:
        from engine.bridge.android import DELEGATES, DEVICE_DIR
        arguments = [f"--graph={DEVICE_DIR}/{MODEL_NAME}", f"--num_runs={settings.runs}",
                     f"--warmup_runs={settings.warmup}", "--min_secs=0", "--warmup_min_secs=0",
                     "--enable_op_profiling=true", "--op_profiling_output_mode=proto",
                     f"--op_profiling_output_file={DEVICE_DIR}/{delegate}.profile.pb",
                     "--export_model_runtime_info=true",
                     f"--model_runtime_info_output_file={DEVICE_DIR}/{delegate}.runtime_info.pb"]
        if settings.threads:
            arguments.append(f"--num_threads={settings.threads}")
        if settings.input_shapes:
            arguments.append("--input_layer=" + ",".join(settings.input_shapes))
            arguments.append("--input_layer_shape=" + ":".join(",".join(map(str, shape))
                                                               for shape in settings.input_shapes.values()))
        return arguments + list(DELEGATES[delegate])

    def describe(self) -> dict:
        from engine.bridge.android import open_android_phone
        phone = self._phone or open_android_phone(self.serial)
        entry = phone.entry
        return {"name": "android", "address": f"{ANDROID_SCHEME}:{phone.serial}", "device": entry.get("model", ""),
                "serial": phone.serial, "manufacturer": entry.get("manufacturer", ""), "chip": entry.get("soc", ""),
                "soc_manufacturer": entry.get("soc_manufacturer", ""),
                "os": f"Android {entry.get('android_version', '')}".strip(), "sdk": entry.get("sdk", ""),
                "abi": entry.get("abi", ""), "backend": "litert", "runtime": "LiteRT benchmark_model",
                "delegates": list(self.delegates), "ready": True}

    def profile(self, settings: Optional[ProfileSettings] = None, progress: Optional[ProgressCallback] = None,
                cancel: Optional[threading.Event] = None) -> Profile:
        """One benchmark_model run per delegate.  The profile of the first delegate asked is returned; all that
        finished are in `self.profiles`.  A cancel or a disconnect keeps the runs that finished."""
        from engine.bridge.android import DEVICE_DIR, BenchmarkCancelled, PhoneDisconnected
        if self._phone is None or self._model is None:
            raise TargetError("no model prepared: call prepare(model_path, settings) first")
        settings = settings or self._settings
        cancel = cancel or threading.Event()
        phone = self._phone
        total = len(self.delegates) * len(PHASES)
        self.profiles = {}
        failures: dict[str, str] = {}
        stopped = ""

        def report(done: int, message: str) -> None:
            if progress is not None:
                progress(done, total, message)

        for position, delegate in enumerate(self.delegates):
            base = position * len(PHASES)
            report(base, f"{delegate}: starting benchmark_model on {phone.name}")
            seen = {"runs": 0}

            def on_line(line: str, _delegate=delegate, _base=base, _seen=seen) -> None:
                if "Initialized session" in line:
                    report(_base + 1, f"{_delegate}: model initialised on the phone")
                elif "Running benchmark for at least" in line:
                    _seen["runs"] += 1
                    phase = "warm-up runs" if _seen["runs"] == 1 else f"{settings.runs} measured runs"
                    report(_base + 1 + _seen["runs"], f"{_delegate}: {phase}")

            for stale in ("profile.pb", "runtime_info.pb"):
                phone.shell(f"rm -f {DEVICE_DIR}/{delegate}.{stale}")
            try:
                run = phone.run_benchmark(BINARY_NAME, self._arguments(delegate, settings), on_line, cancel)
                if run.exit_code != 0:
                    failures[delegate] = self._failure(run)
                    continue
                profiling_data = phone.pull(f"{DEVICE_DIR}/{delegate}.profile.pb")
                runtime_info = phone.pull(f"{DEVICE_DIR}/{delegate}.runtime_info.pb")
            except BenchmarkCancelled:
                stopped = "cancelled"
                break
            except PhoneDisconnected as exc:
                stopped = str(exc)
                break
            report(base + len(PHASES), f"{delegate}: results copied")
            self.profiles[delegate] = self._build(delegate, run, profiling_data, runtime_info, settings)
        return self._result(stopped, failures, settings)

    def _failure(self, run) -> str:
        """One line for a benchmark_model process that failed: the shell's word or the runtime's."""
        text = run.error_line
        if run.exit_code == 127 or "not found" in text and BINARY_NAME in text:
            return f"benchmark_model is not on the phone any more ({text}): profile again to push it"
        if run.exit_code == 126 or "not executable" in text or "Permission denied" in text:
            return (f"the phone cannot execute benchmark_model ({text}): give the android_aarch64 build of "
                    "benchmark_model")
        return f"the runtime rejected the model: {text}"

    def _build(self, delegate, run, profiling_data, runtime_info, settings) -> Profile:
        from engine.bridge.android import parse_benchmark_output
        summary = parse_benchmark_output(run.lines)
        warnings = []
        if profiling_data is None:
            warnings.append("benchmark_model wrote no per-operator profile (an old binary without "
                            "--op_profiling_output_mode=proto?): only the end-to-end time is known")
        if runtime_info is None:
            unsupported = "export_model_runtime_info" in summary.unconsumed_flags
            warnings.append("this benchmark_model " + ("does not know --export_model_runtime_info" if unsupported
                                                       else "wrote no runtime info") +
                            ": which delegate ran each operator is inferred from the profile rows")
        if settings.inputs != "random":
            warnings.append("benchmark_model feeds its own random inputs: the inputs setting does not apply")
        target = dict(self.describe(), delegate=delegate, init_ms=summary.init_ms, init_kind=MEASURED,
                      delegate_log=summary.notes)
        if summary.peak_memory_mb is not None:
            target["peak_memory_mb"] = summary.peak_memory_mb
        profile_settings = dict(settings.to_dict(), delegate=delegate, inputs="random (benchmark_model's)")
        return profile_from_benchmark(delegate=delegate, model_path=str(self._model), profiling_data=profiling_data,
                                      runtime_info=runtime_info, summary=summary, settings=profile_settings,
                                      target=target, analysis=self._analysis_or_none(), warnings=warnings)

    def _result(self, stopped: str, failures: Mapping[str, str], settings: ProfileSettings) -> Profile:
        finished = [d for d in self.delegates if d in self.profiles]
        problems = [f"{d} run failed: {failures[d]}" for d in self.delegates if d in failures]
        if not finished:
            if stopped == "cancelled":
                return _empty_profile(str(self._model), self.delegates[0], self.describe_quietly(),
                                      settings.to_dict(), "cancelled")
            if stopped:
                raise TargetError(stopped)
            raise TargetError(next(iter(failures.values())) if len(failures) == 1 else "; ".join(problems))
        first = self.profiles[finished[0]]
        error = ""
        if stopped == "cancelled":
            error = "cancelled"
        elif stopped:
            error = f"{stopped}; the {', '.join(finished)} run(s) are kept"
        not_run = [d for d in self.delegates if d not in self.profiles and d not in failures]
        if error and not_run:
            problems.append(f"{', '.join(not_run)} not run")
            if stopped != "cancelled":  # "cancelled" stays the whole error: the CLI exits 130 on it
                error += f" ({', '.join(not_run)} not run)"
        if problems:
            first = replace(first, warnings=tuple(first.warnings) + tuple(problems))
        if error or failures:
            first = replace(first, complete=False, error=error or problems[0])
        self.profiles[finished[0]] = first
        return first

    def describe_quietly(self) -> dict:
        try:
            return self.describe()
        except TargetError:
            return {"name": "android", "serial": self.serial or ""}

    # -- the rest of the Target interface ---------------------------------------------------

    def _analysis_or_none(self):
        try:
            return self.analysis
        except Exception:  # no importer for .tflite here: the profile takes op types from the runtime
            return None

    @property
    def analysis(self):
        if self._model is None:
            raise TargetError("no model prepared: call prepare(model_path, settings) first")
        if self._analysis is None:
            from engine.analysis import analyze
            from importers import open_model
            shapes = dict(self._settings.input_shapes) if self._settings else None
            self._analysis = analyze(open_model(self._model, input_shapes=shapes or None))
        return self._analysis

    def run(self, inputs: Optional[Mapping[str, Any]] = None) -> dict:
        raise TargetError("android targets time the model with benchmark_model, which returns no outputs; compare "
                          "values on the LiteRT CPU reference of this computer")

    def close(self) -> None:
        self._phone = None  # adb keeps no session open between calls
