"""Android phones over adb (engine.bridge.android, engine.targets.android), tested at adbutils' seam.

Nothing runs on a phone here.  The adb server is fake (tests/engine/fake_adb_server.py: the
adb protocol on a loopback socket, so adbutils and LayerScope run unchanged to the wire);
the program standing in for Google's `benchmark_model` opens the real model pushed to the
fake phone with the real LiteRT interpreter (its operators, tensor names and load errors are
LiteRT's), prints a log shaped like benchmark_model's, and writes `BenchmarkProfilingData`
and `ModelRuntimeDetails` protos built with ai-edge-litert's own `profiling_info_pb2` and
`model_runtime_info_pb2`.

SYNTHETIC: every time below is made up by the fake (OP_US per operator, DELEGATE_SPEEDUP for
a partition, PROFILER_OVERHEAD on the end-to-end time), not a measurement.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

pytest.importorskip("adbutils")
litert = pytest.importorskip("ai_edge_litert.interpreter")
from ai_edge_litert import model_runtime_info_pb2, profiling_info_pb2  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from fake_adb_server import FakeAdbServer, FakePhone, elf_header, phone_properties  # noqa: E402

from engine.bridge.android import BENCHMARK_ENV, DEVICE_DIR, list_android_phones  # noqa: E402
from engine.profile import ATTRIBUTED, MEASURED, Profile  # noqa: E402
from engine.targets import ProfileSettings, TargetError, get_target  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "tests" / "data" / "tflite" / "hand_recrop.tflite"
SERIAL = "R5CT1234ABC"
XNNPACK_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "PRELU", "FULLY_CONNECTED", "RESHAPE", "MAX_POOL_2D",
               "AVERAGE_POOL_2D", "MUL", "LOGISTIC", "CONCATENATION", "PAD"}
GPU_REJECTS: set = set()             # op types the fake GPU delegate refuses (a test sets it)
DELEGATE_SPEEDUP = 0.6               # SYNTHETIC
PROFILER_OVERHEAD = 1.05             # SYNTHETIC: end-to-end = sum of rows x this


def op_us(index: int) -> float:
    return 10.0 + 3.0 * (index % 7)  # SYNTHETIC per-operator time, microseconds


def _stat(avg: float, runs: int):
    stat = profiling_info_pb2.OpProfilingStat()
    stat.first, stat.last, stat.avg = int(avg * 1.3), int(avg), int(avg)
    stat.min, stat.max, stat.stddev = int(avg * 0.9), int(avg * 1.3), avg * 0.05
    stat.variance, stat.sum, stat.count = (avg * 0.05) ** 2, int(avg * runs), runs
    return stat


def fake_benchmark_model(phone: FakePhone, arguments: list, with_runtime_info: bool = True):
    """What benchmark_model prints and writes, for the real model on the fake phone."""
    flags = dict(a[2:].split("=", 1) for a in arguments if a.startswith("--") and "=" in a)
    runs, warmup = int(flags.get("num_runs", 50)), int(flags.get("warmup_runs", 1))
    delegate = "gpu" if flags.get("use_gpu") == "true" else "cpu" if flags.get("use_xnnpack") == "false" \
        else "xnnpack"
    log = ["INFO: STARTING!", "INFO: Log parameter values verbosely: [0]", f"INFO: Num runs: [{runs}]",
           f"INFO: Graph: [{flags['graph']}]", "INFO: Enable op profiling: [1]"]
    if not with_runtime_info:
        log.append("WARN: Unconsumed cmdline flags: --export_model_runtime_info=true "
                   f"--model_runtime_info_output_file={flags.get('model_runtime_info_output_file')}")
    model_bytes = phone.files[flags["graph"]]
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "model.tflite"
        local.write_bytes(model_bytes)
        try:
            interpreter = litert.Interpreter(
                model_path=str(local),
                experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            interpreter.allocate_tensors()
        except Exception as exc:  # LiteRT's own words, as benchmark_model logs them
            return (log + [f"INFO: Loaded model {flags['graph']}"]
                    + [f"ERROR: {line}" for line in str(exc).splitlines() if line.strip()]
                    + ["ERROR: Failed to allocate tensors!", "Benchmarking failed."]), {}, 1
        ops = interpreter._get_ops_details()
        names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    log += [f"INFO: Loaded model {flags['graph']}", "INFO: Initialized TensorFlow Lite runtime."]
    if delegate == "gpu" and any(op["op_name"] in GPU_REJECTS for op in ops):
        bad = next(op for op in ops if op["op_name"] in GPU_REJECTS)
        return (log + ["INFO: Created TensorFlow Lite delegate for GPU.",
                       f"ERROR: Following operations are not supported by GPU delegate:\n{bad['op_name']}: "
                       "Operation is not supported.", "ERROR: Failed to apply GPU delegate.",
                       "Benchmarking failed."]), {}, 1
    supported = {"cpu": set(), "xnnpack": XNNPACK_OPS, "gpu": {op["op_name"] for op in ops}}[delegate]
    partitions, current = [], []
    for op in ops:  # consecutive supported operators form one partition
        if op["op_name"] in supported:
            current.append(op["index"])
        elif current:
            partitions.append(current)
            current = []
    if current:
        partitions.append(current)
    delegate_name = {"xnnpack": "TfLiteXNNPackDelegate", "gpu": "TfLiteGpuDelegateV2"}.get(delegate, "")
    replaced = {i for p in partitions for i in p}
    if partitions:
        log += [f"INFO: Created TensorFlow Lite {'XNNPACK delegate for CPU' if delegate == 'xnnpack' else 'delegate for GPU'}.",
                f"INFO: Replacing {len(replaced)} out of {len(ops)} node(s) with delegate ({delegate_name}) node, "
                f"yielding {len(partitions)} partitions for the whole graph."]
    data = profiling_info_pb2.BenchmarkProfilingData()
    data.model_name = flags["graph"]
    subgraph = data.runtime_profile.subgraph_profiles.add()
    subgraph.subgraph_index, subgraph.subgraph_name = 0, "main"
    details = model_runtime_info_pb2.ModelRuntimeDetails()
    runtime = details.subgraphs.add()
    runtime.subgraph_id = 0
    total_us, order = 0.0, 0
    delegate_of = {i: len(ops) + k for k, p in enumerate(partitions) for i in p}
    for op in ops:
        node = runtime.nodes.add()
        node.id, node.name, node.type = op["index"], op["op_name"], "0"
        if op["index"] in delegate_of:
            node.delegated_to_node_id = delegate_of[op["index"]]
    for k, partition in enumerate(partitions):
        node = runtime.nodes.add()
        node.id, node.name, node.type = len(ops) + k, delegate_name, f"Delegate/{delegate_name}"
        node.delegate_node_details.delegate_name = delegate_name
        node.delegate_node_details.tflite_node_ids_replaced.extend(partition)
    emitted = set()
    for op in ops:  # rows in run order: an operator of its own, or its partition's delegate node once
        index = op["index"]
        if index in delegate_of:
            node_index = delegate_of[index]
            if node_index in emitted:
                continue
            emitted.add(node_index)
            members = partitions[node_index - len(ops)]
            avg = DELEGATE_SPEEDUP * sum(op_us(i) for i in members)
            row = subgraph.per_op_profiles.add()
            row.name = f"[{names[int(ops[members[-1]]['outputs'][0])]}]:{node_index}"
            row.node_type = delegate_name
            if delegate == "xnnpack":  # XNNPACK's own kernel rows, numbered by XNNPACK
                for j, member in enumerate(members[:3]):
                    inner = subgraph.per_op_profiles.add()
                    inner.name = f"Delegate/Convolution (NHWC, F32) IGEMM:{j}"
                    inner.node_type = "Convolution (NHWC, F32) IGEMM"
                    inner.inference_microseconds.CopyFrom(_stat(op_us(member) * 0.5, runs))
        else:
            avg = op_us(index)
            row = subgraph.per_op_profiles.add()
            row.name = f"[{names[int(op['outputs'][0])]}]:{index}"
            row.node_type = op["op_name"]
        row.inference_microseconds.CopyFrom(_stat(avg, runs))
        row.times_called, row.run_order = 1, order
        order += 1
        total_us += avg
        runtime.execution_plan.append(index if index not in delegate_of else delegate_of[index])
    e2e = total_us * PROFILER_OVERHEAD
    log += ["INFO: The input model file size (MB): 0.123792", "INFO: Initialized session in 12.5ms.",
            f"INFO: Running benchmark for at least {warmup} iterations and at least 0 seconds but terminate if "
            "exceeding 150 seconds.",
            f"INFO: count={warmup} first={int(e2e * 2)} curr={int(e2e)} min={int(e2e)} max={int(e2e * 2)} "
            f"avg={e2e * 1.5:.1f} std={int(e2e * 0.3)}", "",
            f"INFO: Running benchmark for at least {runs} iterations and at least 0 seconds but terminate if "
            "exceeding 150 seconds.",
            f"INFO: count={runs} first={int(e2e)} curr={int(e2e)} min={int(e2e * 0.9)} max={int(e2e * 1.2)} "
            f"avg={e2e:.1f} std={int(e2e * 0.05)} p5={int(e2e * 0.9)} median={int(e2e)} p95={int(e2e * 1.1)}", "",
            f"INFO: Inference timings in us: Init: 12500, First inference: {int(e2e * 2)}, Warmup (avg): "
            f"{e2e * 1.5:.1f}, Inference (avg): {e2e:.1f}",
            "INFO: Memory footprint delta from the start of the tool (MB): init=3.2 overall=4.1",
            "INFO: Overall peak memory footprint (MB) via periodic monitoring: 9.8"]
    written = {flags["op_profiling_output_file"]: data.SerializeToString()}
    if with_runtime_info:
        written[flags["model_runtime_info_output_file"]] = details.SerializeToString()
    return log, written, 0


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture()
def phone():
    return FakePhone(SERIAL, properties=phone_properties(), program=fake_benchmark_model)


@pytest.fixture()
def adb(monkeypatch, phone):
    server = FakeAdbServer([phone])
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(server.port))
    monkeypatch.setenv("ANDROID_ADB_SERVER_HOST", "127.0.0.1")
    yield server
    server.close()


@pytest.fixture()
def binary(tmp_path) -> Path:
    path = tmp_path / "benchmark_model"
    path.write_bytes(elf_header())
    return path


def _target(binary, delegates="xnnpack", address=f"android:{SERIAL}"):
    return get_target(address, benchmark_model=str(binary), delegates=delegates)


def _profile(binary, delegates, settings=None, progress=None, cancel=None, address=f"android:{SERIAL}"):
    target = _target(binary, delegates, address)
    settings = settings or ProfileSettings(runs=10, warmup=2)
    target.prepare(MODEL, settings)
    profile = target.profile(settings, progress, cancel)
    return target, profile


# ----------------------------------------------------------------------------- listing

def test_devices_lists_phones_with_model_soc_version_abi_and_unauthorised_ones(adb, phone):
    adb.phones["0B191JEC2"] = FakePhone("0B191JEC2", state="unauthorized")
    phones, notes = list_android_phones()
    assert notes == []
    ready = next(p for p in phones if p["serial"] == SERIAL)
    assert (ready["model"], ready["soc"], ready["android_version"], ready["abi"], ready["ready"]) == \
        ("Pixel 8", "Tensor G3", "14", "arm64-v8a", True)
    locked = next(p for p in phones if p["serial"] == "0B191JEC2")
    assert locked["state"] == "unauthorized" and not locked["ready"]
    assert "Allow USB debugging" in locked["detail"]

    env = dict(os.environ, PYTHONPATH=str(REPO))
    text = subprocess.run([sys.executable, "-m", "engine", "devices", "--no-mdns", "--no-usb"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert text.returncode == 0, text.stderr
    assert f"android:{SERIAL}" in text.stdout and "Tensor G3" in text.stdout and "Android 14" in text.stdout
    assert "unauthorized" in text.stdout and "Allow USB debugging" in text.stdout
    listed = json.loads(subprocess.run([sys.executable, "-m", "engine", "devices", "--no-mdns", "--no-usb", "--json"],
                                       capture_output=True, text=True, env=env, timeout=60).stdout)
    android = [e for e in listed["entries"] if e["source"] == "android"]
    assert {e["address"] for e in android} == {f"android:{SERIAL}", "android:0B191JEC2"}


def test_no_adb_and_no_phone_are_one_line_each(monkeypatch, binary):
    # No server on the port and no adb program to start one.
    with socket_port() as free_port:
        monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(free_port))
    monkeypatch.setenv("ADBUTILS_ADB_PATH", "/nonexistent/adb")
    phones, notes = list_android_phones()
    assert phones == [] and "adb is not available" in notes[0] and "apt install adb" in notes[0]
    target = _target(binary)
    with pytest.raises(TargetError, match="adb is not available"):
        target.prepare(MODEL, ProfileSettings())

    server = FakeAdbServer([])
    try:
        monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(server.port))
        with pytest.raises(TargetError, match="no Android phone is connected over adb") as caught:
            _target(binary, address="android").prepare(MODEL, ProfileSettings())
        assert "\n" not in str(caught.value)
        with pytest.raises(TargetError, match="no Android phone 'NOPE'"):
            _target(binary, address="android:NOPE").prepare(MODEL, ProfileSettings())
    finally:
        server.close()


class socket_port:
    """A loopback port nothing listens on (bound, then released)."""

    def __enter__(self) -> int:
        import socket
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        return self._socket.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self._socket.close()


def test_unauthorised_phone_says_accept_the_prompt(adb, phone, binary):
    phone.state = "unauthorized"
    with pytest.raises(TargetError, match="accept the 'Allow USB debugging") as caught:
        _target(binary).prepare(MODEL, ProfileSettings())
    assert SERIAL in str(caught.value) and "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- the binary

def test_missing_binary_and_the_environment_variable(adb, phone, binary, monkeypatch, tmp_path):
    monkeypatch.delenv(BENCHMARK_ENV, raising=False)
    target = get_target(f"android:{SERIAL}")
    with pytest.raises(TargetError, match="need Google's benchmark_model") as caught:
        target.prepare(MODEL, ProfileSettings())
    assert "android_aarch64" in str(caught.value) and "no package registry" in str(caught.value)
    with pytest.raises(TargetError, match="benchmark_model not found at"):
        get_target(f"android:{SERIAL}", benchmark_model=str(tmp_path / "nowhere")).prepare(MODEL, ProfileSettings())
    script = tmp_path / "benchmark_model.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(TargetError, match="no ELF header"):
        get_target(f"android:{SERIAL}", benchmark_model=str(script)).prepare(MODEL, ProfileSettings())
    assert not phone.files  # nothing was pushed
    monkeypatch.setenv(BENCHMARK_ENV, str(binary))
    target = get_target(f"android:{SERIAL}")
    target.prepare(MODEL, ProfileSettings())
    assert phone.files[f"{DEVICE_DIR}/benchmark_model"] == binary.read_bytes()
    assert phone.modes[f"{DEVICE_DIR}/benchmark_model"] == 0o755
    assert phone.files[f"{DEVICE_DIR}/model.tflite"] == MODEL.read_bytes()


def test_wrong_abi_is_caught_on_this_computer(adb, phone, tmp_path):
    x86 = tmp_path / "benchmark_model"
    x86.write_bytes(elf_header(machine=62))  # x86-64: the linux_x86_64 build given by mistake
    with pytest.raises(TargetError, match=r"built for x86_64, but .* runs arm64-v8a.*android_aarch64"):
        get_target(f"android:{SERIAL}", benchmark_model=str(x86)).prepare(MODEL, ProfileSettings())
    assert not phone.files


def test_binary_gone_from_the_phone_says_so(adb, phone, binary):
    target = _target(binary)
    target.prepare(MODEL, ProfileSettings(runs=3, warmup=1))
    del phone.files[f"{DEVICE_DIR}/benchmark_model"]  # deleted on the phone between prepare and profile
    with pytest.raises(TargetError, match="not on the phone any more"):
        target.profile()


# ----------------------------------------------------------------------------- profiles

def test_cpu_xnnpack_and_gpu_runs_give_profiles_keyed_by_operator_index(adb, phone, binary):
    seen = []
    target, profile = _profile(binary, "cpu,xnnpack,gpu", progress=lambda d, t, m: seen.append((d, t, m)))
    analysis = target.analysis
    operators = [node_id for node_id in analysis.nodes]
    assert len(operators) == 63
    assert set(target.profiles) == {"cpu", "xnnpack", "gpu"} and profile is target.profiles["cpu"]

    cpu = target.profiles["cpu"]
    assert cpu.mode == "exact" and cpu.complete and cpu.runs_completed == 10
    assert list(cpu.nodes) == operators  # every operator, by its index, in execution order
    for node_id, node in cpu.nodes.items():
        assert node.kind == MEASURED and node.compute_unit == "CPU" and node.compute_unit_kind == MEASURED
        assert node.time.statistic == "mean" and node.time.count == 10
        assert node.time.median_ms == pytest.approx(int(op_us(int(node_id))) / 1000.0)
        assert node.op_type == analysis.nodes[node_id].op_type
    assert cpu.coverage == pytest.approx(1 / PROFILER_OVERHEAD, rel=0.01)
    assert cpu.end_to_end.statistic == "mean" and cpu.end_to_end.kind == MEASURED
    assert cpu.target["soc"] if "soc" in cpu.target else cpu.target["chip"] == "Tensor G3"
    assert cpu.target["delegate"] == "cpu" and cpu.target["os"] == "Android 14" and cpu.target["init_ms"] == 12.5

    xnnpack = target.profiles["xnnpack"]
    assert xnnpack.mode == "deployed"
    delegated = [g for g in xnnpack.groups if g.kernel_op == "delegate"]
    assert delegated and all(g.kernel == "TfLiteXNNPackDelegate" for g in delegated)
    covered = [n for g in delegated for n in g.node_ids]
    on_builtin = [g for g in xnnpack.groups if g.kernel_op != "delegate"]
    assert sorted(covered + [g.group_id for g in on_builtin], key=int) == operators
    for group in delegated:  # the partition's measured time split by FLOPs, summing back to it
        members = [xnnpack.nodes[n] for n in group.node_ids]
        assert sum(m.time.median_ms for m in members) == pytest.approx(group.time.median_ms)
        assert all(m.kind == (ATTRIBUTED if len(members) > 1 else MEASURED) for m in members)
        flops = [analysis.nodes[n].flops or 0 for n in group.node_ids]
        if len(members) > 1 and sum(flops):
            heaviest = max(range(len(flops)), key=flops.__getitem__)
            assert members[heaviest].time.median_ms == max(m.time.median_ms for m in members)
    assert any("numbered by the delegate" in w for w in xnnpack.warnings)

    gpu = target.profiles["gpu"]
    (segment,) = [g for g in gpu.groups if g.kernel_op == "delegate"]
    assert segment.kernel == "TfLiteGpuDelegateV2" and list(segment.node_ids) == operators
    assert {n.compute_unit for n in gpu.nodes.values()} == {"GPU"}

    commands = [c for c in phone.commands if "./benchmark_model" in c]
    assert len(commands) == 3
    assert "--use_xnnpack=false" in commands[0] and "--use_gpu=true" in commands[2]
    for command in commands:
        for flag in ("--enable_op_profiling=true", "--op_profiling_output_mode=proto", "--export_model_runtime_info=true",
                     "--num_runs=10", "--warmup_runs=2", "--num_threads=1"):
            assert flag in command
    assert seen[-1][0] == seen[-1][1]  # progress reached the end
    assert any("xnnpack: warm-up runs" in m for _, _, m in seen)
    assert len(Profile.from_json_dict(json.loads(gpu.to_json())).nodes) == 63  # round-trips with its kinds


def test_cli_profile_writes_one_json_per_delegate(adb, phone, binary, tmp_path):
    out = tmp_path / "phone.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "engine", "profile", str(MODEL), "--target", f"android:{SERIAL}",
                             "--benchmark-model", str(binary), "--android-delegates", "xnnpack,gpu", "--runs", "5",
                             "--json", str(out), "--model-explorer", str(tmp_path / "me.json"),
                             "--csv", str(tmp_path / "p.csv"), "--report", str(tmp_path / "p.html"),
                             "--markdown", str(tmp_path / "p.md")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    first, gpu = json.loads(out.read_text()), json.loads((tmp_path / "phone.gpu.json").read_text())
    assert first["target"]["delegate"] == "xnnpack" and gpu["target"]["delegate"] == "gpu"
    assert "Delegates (benchmark_model" in result.stdout and "63 on GPU" in result.stdout
    assert (tmp_path / "me.json").exists()
    # benchmark_model reports means and min/max: no export may call them medians or p10/p90
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0].endswith(",statistic") and all(row.endswith(",mean") for row in rows[1:])
    report, markdown = (tmp_path / "p.html").read_text(), (tmp_path / "p.md").read_text()
    assert "end-to-end mean (min–max" in report and "<th>mean ms</th><th>min</th><th>max</th>" in report
    assert "summed layer means" in report and "summed layer medians" not in report
    assert "| end-to-end mean (measured) | min–max |" in markdown and "| stage | mean |" in markdown
    # compared with a profile of medians, the difference is said
    medians = json.loads(out.read_text())
    for time in [medians["end_to_end"]] + [node["time"] for node in medians["nodes"]]:
        time.pop("statistic"), time.pop("reported_runs")
        time["samples_ms"] = [time["median_ms"]]
    (tmp_path / "medians.json").write_text(json.dumps(medians))
    compared = subprocess.run([sys.executable, "-m", "engine", "compare", str(tmp_path / "medians.json"), str(out)],
                              capture_output=True, text=True, env=env, timeout=120)
    assert compared.returncode == 0, compared.stderr
    assert "a's times are medians, b's are means" in compared.stdout + compared.stderr


def test_runtime_rejects_the_model_in_one_line(adb, phone, binary, tmp_path):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(MODEL.read_bytes()[:4000])  # truncated by a failed download
    target = _target(binary, "cpu")
    target.prepare(broken, ProfileSettings(runs=3, warmup=1))
    with pytest.raises(TargetError, match="the runtime rejected the model: ") as caught:
        target.profile()
    assert "\n" not in str(caught.value)


def test_a_delegate_that_fails_keeps_the_others(adb, phone, binary, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "GPU_REJECTS", {"PRELU"})
    target, profile = _profile(binary, "cpu,gpu")
    assert set(target.profiles) == {"cpu"} and profile.runs_completed == 10
    assert not profile.complete and "gpu run failed" in profile.error and "PRELU" in profile.error


def test_disconnect_mid_run_keeps_the_finished_runs(adb, phone, binary):
    phone.disconnect_when = lambda arguments: "--use_gpu=true" in arguments
    target, profile = _profile(binary, "cpu,gpu,xnnpack")
    assert set(target.profiles) == {"cpu"} and len(profile.nodes) == 63
    assert not profile.complete
    assert "disconnected" in profile.error and "cpu run(s) are kept" in profile.error and "xnnpack not run" in profile.error

    phone.gone, phone.disconnect_when = False, lambda arguments: True
    target = _target(binary, "cpu")
    target.prepare(MODEL, ProfileSettings(runs=3, warmup=1))
    with pytest.raises(TargetError, match="disconnected while benchmark_model ran"):
        target.profile()


def test_cancel_stops_the_phone_and_keeps_finished_runs(adb, phone, binary):
    phone.line_delay = 0.05
    cancel = threading.Event()

    def progress(done, total, message):
        if message.startswith("gpu:") and "warm-up" in message:
            cancel.set()

    target, profile = _profile(binary, "cpu,gpu", progress=progress, cancel=cancel)
    assert set(target.profiles) == {"cpu"} and profile.error == "cancelled" and not profile.complete
    assert phone.killed.wait(5)  # pkill reached the phone
    assert any(c.startswith("pkill") for c in phone.commands)

    phone.killed.clear()
    cancel = threading.Event()
    cancel.set()
    target, profile = _profile(binary, "cpu", cancel=cancel)
    assert profile.runs_completed == 0 and profile.error == "cancelled" and not profile.nodes


def test_old_binary_without_runtime_info(adb, phone, binary):
    phone.program = lambda p, a: fake_benchmark_model(p, a, with_runtime_info=False)
    target, profile = _profile(binary, "gpu")
    (segment,) = [g for g in profile.groups if g.kernel_op == "delegate"]
    assert segment.node_ids == ()  # which operators it covers is unknown without the runtime info
    assert any("does not know --export_model_runtime_info" in w for w in profile.warnings)
    assert any("partition(s)" in w for w in profile.warnings)
