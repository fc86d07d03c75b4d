"""A phone as a Core ML device (engine.bridge.iphone, engine.targets.iphone), tested at coremltools' seam.

Nothing Apple runs here.  As coremltools tests its own remote device
(coremltools/test/ml_program/experimental/test_remote_device.py), the device service is
coremltools' real `_DeviceCtlRemoteService` and `_RemoteMLModelService` talking to an
in-process fake socket that answers Load / Prediction / ComputePlan / Unload the way
ModelRunner does (durations in nanoseconds, outputs as tensor descriptors in a resource
file, compute plans built from coremltools' own ComputePlan classes and model-structure
paths).  `xcrun devicectl` is a fake executable on PATH answering with devicectl's JSON.
The package, the prefix models and their specs are real (converted, cut, saved and re-read
here); compiling (macOS only) is replaced by a copy.

SYNTHETIC: the device times below are made up by the fake (FAKE_MS_PER_OP per op of the
loaded model), not measurements.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
rd = pytest.importorskip("coremltools.models.ml_program.experimental.remote_device")
from coremltools.models.ml_program.experimental.model_structure_path import map_model_spec_to_path  # noqa: E402

from engine.analysis import analyze  # noqa: E402
from engine.bridge.backends import (PhoneSession, _truncated_spec, segments_from_prefixes,  # noqa: E402
                                    split_measured_groups)
from engine.bridge.iphone import FIRST_USE, LINUX_HINT, ModelRunnerApi, list_phones, plan_from_remote  # noqa: E402
from engine.convert import convert  # noqa: E402
from engine.profile import (ATTRIBUTED, DERIVED, MEASURED, PLANNED, UNKNOWN_UNIT, Profile,  # noqa: E402
                            TimingStats)
from engine.targets import ProfileSettings, TargetError, get_target  # noqa: E402
from engine.targets.iphone import PhoneTarget  # noqa: E402
from importers import open_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FAKE_MS_PER_OP = 0.05          # SYNTHETIC device time per op of the loaded model
FAKE_LOAD_NS = 12_500_000      # SYNTHETIC load time reported by the fake ModelRunner (12.5 ms)
PHONE_UDID = "00008110-001A2B3C4D5E6F70"
PHONE_NAME = "Test iPhone"


# ----------------------------------------------------------------------------- fakes of coremltools' parts

def _fake_compile(package: Path, destination: Path) -> Path:
    """Compiling needs macOS: the "compiled" model is a folder holding a copy of the package."""
    target = Path(tempfile.mkdtemp(prefix="compiled-", dir=destination)) / (package.stem + ".mlmodelc")
    target.mkdir()
    shutil.copytree(package, target / "model.mlpackage")
    return target


class FakeAppSession:
    """Stands in for coremltools' _AppSession (the `xcrun devicectl device process launch` process)."""

    def __init__(self):
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive

    def stop(self) -> None:
        self.alive = False


@dataclass
class FakePhone:
    """What the fake phone does: ModelRunner's answers, and the failures a test asks for."""

    predictions: int = 0
    disconnect_after: Optional[int] = None       # predictions answered before the cable is pulled
    not_installed: bool = False                  # every copy into the app's container fails
    without_plan_for: tuple = ("relu6",)          # op types the compute plan leaves out (-> unknown)
    # SYNTHETIC unit costs: the CPU grows with the input, the GPU pays a fixed dispatch cost first
    unit_costs: bool = False
    loads: list = field(default_factory=list)
    sessions: list = field(default_factory=list)


class FakeModelRunnerSocket(rd._JSONRPCSocket):
    """Answers MLModelService requests like ModelRunner (shapes from coremltools' MockDeviceCtlSocket)."""

    def __init__(self, phone: FakePhone, device):
        self.phone = phone
        self.device = device
        self.models: dict[str, object] = {}   # model id -> spec
        self.responses: dict[str, rd._JSONRPCResponse] = {}

    @property
    def is_alive(self) -> bool:
        return not self._disconnected()

    def _disconnected(self) -> bool:
        return self.phone.disconnect_after is not None and self.phone.predictions >= self.phone.disconnect_after

    def send(self, request, resource_path=None) -> None:
        if self.phone.not_installed:
            raise rd._DeviceCtlError(error_code=1, message="ERROR: The application is not installed "
                                                           "(com.coremltools.modelrunnerd)")
        if self._disconnected():
            raise rd._DeviceCtlError(error_code=1, message="ERROR: The device was disconnected.")
        params = request.params
        model_id = params["modelID"]
        result, error, resource = None, None, None
        if request.method == "MLModelService.Load":
            spec = ct.utils.load_spec(str(Path(resource_path) / "model.mlpackage"))
            self.models[model_id] = spec
            self.phone.loads.append(len(_ops(spec)))
            result = {"modelID": model_id, "computeUnits": params["computeUnits"], "duration": FAKE_LOAD_NS,
                      "isCached": False}
        elif request.method == "MLModelService.Prediction":
            spec = self.models.get(model_id)
            if spec is None:
                error = rd._JSONRPCError(code=-32001, message=f"The model with ID {model_id} is not loaded.")
            else:
                self.phone.predictions += 1
                data = tempfile.NamedTemporaryFile("w+b", suffix=".bin", delete=False)
                outputs = {}
                for feature in spec.description.output:
                    shape = [int(d) for d in feature.type.multiArrayType.shape] or [1]
                    outputs[feature.name] = rd._TensorDescriptor.from_array(
                        np.zeros(shape, np.float32), data).as_dict()
                data.close()
                resource = Path(data.name)
                jitter = 1.0 + 0.01 * (self.phone.predictions % 5)
                scale = 1.0
                if self.phone.unit_costs:
                    elements = np.prod([int(d) for d in spec.description.input[0].type.multiArrayType.shape])
                    relative = elements / (3 * 64 * 64)
                    scale = relative if params["computeUnits"] == "CPU_ONLY" else 1.5 + 0.1 * relative
                duration_ns = int(len(_ops(spec)) * FAKE_MS_PER_OP * jitter * scale * 1e6)
                result = {"modelID": model_id, "computeUnits": params["computeUnits"], "outputs": outputs,
                          "duration": duration_ns}
        elif request.method == "MLModelService.ComputePlan":
            result = {"modelID": model_id, "infos": [i.to_dict() for i in _plan_infos(self.models[model_id],
                                                                                     self.phone.without_plan_for)]}
        elif request.method == "MLModelService.Unload":
            self.models.pop(model_id, None)
            result = {"modelID": model_id, "computeUnits": params["computeUnits"]}
        self.responses[request.id] = rd._JSONRPCResponse(id=request.id, result=result, error=error,
                                                         resource=resource)

    def receive(self, id):
        return self.responses.get(id)


def _ops(spec) -> list:
    block = spec.mlProgram.functions["main"]
    return [op for op in block.block_specializations[block.opset].operations if op.type != "const"]


def _plan_infos(spec, without: tuple) -> list:
    """The phone's compute plan of `spec`, from coremltools' own classes and structure paths."""
    infos = []
    ne = rd.ComputePlan.NeuralEngineDevice(total_core_count=16)
    cpu, gpu = rd.ComputePlan.CPUDevice(), rd.ComputePlan.GPUDevice()
    for index, (op, path) in enumerate(map_model_spec_to_path(spec)):
        if op.type == "const" or op.type in without:
            continue
        preferred = ne if op.type in ("conv", "conv_transpose") else gpu if op.type == "add" else cpu
        usage = rd.ComputePlan.DeviceUsage(preferred=preferred, supported=[cpu, gpu, ne])
        infos.append(rd.ComputePlan.OperationOrLayerInfo(device_usage=usage, estimated_cost=1.0 + index % 7,
                                                         path=path))
    return infos


def _fake_api(phone: FakePhone, locked: bool = False) -> ModelRunnerApi:
    devices = {"result": {"devices": [_devicectl_device(PHONE_NAME, PHONE_UDID)]}}

    async def prepare(device, credentials, working_directory):
        if locked:
            raise rd._DeviceCtlError(error_code=1, message="ERROR: The device is locked. (com.apple.dt.CoreDevice"
                                                           ".error 4000)")
        assert credentials.development_team == "TEAM123456"
        session = FakeAppSession()
        phone.sessions.append(session)
        return rd.Device(name=device.name, type=device.type, identifier=device.identifier, udid=device.udid,
                         os_version=device.os_version, os_build_number=device.os_build_number,
                         developer_mode_state=device.developer_mode_state, state=device.state, session=session)

    def remote_service(device):
        return rd._DeviceCtlRemoteService(socket=FakeModelRunnerSocket(phone, device), poll_time=0.001,
                                          max_attempts=3)

    return ModelRunnerApi(list_devices=lambda: devices, prepare=prepare, remote_service=remote_service,
                          compile=_fake_compile)


def _devicectl_device(name: str, udid: str, kind: str = "iPhone", tunnel: str = "connected",
                      developer_mode: str = "enabled") -> dict:
    """One device as `xcrun devicectl list devices -j` writes it (the keys coremltools reads, plus the model)."""
    return {"identifier": f"{udid[:8]}-CORE-DEVICE", "deviceProperties": {
                "name": name, "osVersionNumber": "18.1", "osBuildUpdate": "22B83",
                "developerModeStatus": developer_mode},
            "hardwareProperties": {"deviceType": kind, "udid": udid, "marketingName": "iPhone 15 Pro",
                                   "productType": "iPhone16,1"},
            "connectionProperties": {"tunnelState": tunnel}}


# ----------------------------------------------------------------------------- a real converted package

@pytest.fixture(scope="module")
def converted(tmp_path_factory, sample_model):
    folder = tmp_path_factory.mktemp("phone")
    result = convert(sample_model, folder / "mobileunet.mlpackage")
    return result.package_path


@pytest.fixture(autouse=True)
def team(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERSCOPE_TEAM_ID", "TEAM123456")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("LAYERSCOPE_MODELRUNNER_DIR", str(tmp_path / "modelrunner"))


def _profile(target: PhoneTarget, package: Path, runs: int = 4, **kwargs):
    settings = ProfileSettings(mode="deployed", runs=runs, warmup=1)
    target.prepare(package, settings)
    progress = []
    profile = target.profile(settings, lambda done, total, message: progress.append((done, total, message)),
                             **kwargs)
    return profile, progress


# ----------------------------------------------------------------------------- the profile flow

def test_a_phone_profile_keeps_every_figure_s_kind(converted, sample_model):
    phone = FakePhone()
    target = PhoneTarget(f"iphone:{PHONE_NAME}?granularity=segment", phone_api=_fake_api(phone))
    try:
        profile, progress = _profile(target, converted)
        analysis = target.analysis
    finally:
        target.close()
    assert profile.complete and profile.runs_completed == 4
    # keyed by the ONNX source through the layer map written beside the package
    assert profile.model_path == str(sample_model.resolve()) and "layer_map" in profile.target
    assert set(profile.nodes) <= set(analysis.nodes)
    # the run times are ModelRunner's (SYNTHETIC here): ops of the whole package x FAKE_MS_PER_OP
    whole_ops = max(phone.loads)
    assert profile.end_to_end.kind == MEASURED
    assert profile.end_to_end.median_ms == pytest.approx(whole_ops * FAKE_MS_PER_OP, rel=0.05)
    assert profile.target["load_ms"] == pytest.approx(FAKE_LOAD_NS / 1e6) and profile.target["load_kind"] == MEASURED
    assert profile.target["name"] == "iphone" and profile.target["udid"] == PHONE_UDID
    # one prefix model per stage boundary was loaded on the phone, fewer ops each
    assert len(phone.loads) >= 4 and sorted(phone.loads[1:-1]) == phone.loads[1:-1]
    # segments: the first is its own prefix (measured), the others differences (derived) beside
    # the measured prefix that ends with them
    # (a segment that also ran ops of no source node, the input and output casts, is split: attributed)
    segments = [g for g in profile.groups if g.prefix_time is not None]
    assert [g.group_id for g in segments] == ["encoder", "bottleneck", "decoder", "head"]
    assert segments[0].time.kind in (MEASURED, ATTRIBUTED)
    assert {g.time.kind for g in segments[1:]} <= {DERIVED, ATTRIBUTED} and segments[1].time.kind == DERIVED
    assert all(g.prefix_time.kind == MEASURED for g in segments)
    assert segments[1].time.median_ms < segments[1].prefix_time.median_ms
    assert segments[-1].prefix_time.median_ms == pytest.approx(profile.end_to_end.median_ms, rel=0.05)
    # per-layer times are split by cost weight: never measured when several ops share a segment
    kinds = {n.kind for n in profile.nodes.values()}
    assert kinds <= {ATTRIBUTED, DERIVED, MEASURED} and ATTRIBUTED in kinds
    # compute units are the plan's (planned), unknown where the plan says nothing, never a default CPU
    units = {(n.compute_unit, n.compute_unit_kind) for n in profile.nodes.values()}
    assert ("NeuralEngine", PLANNED) in units
    assert all(kind == PLANNED for unit, kind in units if unit != UNKNOWN_UNIT)
    clips = [n for n in profile.nodes.values() if n.op_type == "Clip"]
    assert clips and all(n.compute_unit == UNKNOWN_UNIT and n.compute_unit_kind == "" for n in clips)
    # transfers between planned units: bytes from shapes, no time (nothing on the phone is calibrated)
    assert profile.transfers and all(t.time is None and t.bytes for t in profile.transfers)
    assert any(t.from_unit != t.to_unit for t in profile.transfers if t.kind == "edge")
    # progress: warm-up, every run, every segment
    messages = [m for _, _, m in progress]
    assert any(m.startswith("warm-up") for m in messages) and any("run 4/4" in m for m in messages)
    assert any(m.startswith("segment") for m in messages)
    # the summary says what the figures are
    from engine.cli_profile import profile_summary
    summary = profile_summary(profile)
    assert f"Target      iphone: {PHONE_NAME} (iPhone 15 Pro), iOS 18.1" in summary
    assert "Load        12.500 ms measured" in summary
    assert "compute units planned: " in summary and "attributed by the compute plan" in summary
    # the JSON keeps all of it
    again = Profile.from_json_dict(json.loads(profile.to_json()))
    assert again.transfers == profile.transfers and again.groups == profile.groups
    assert again.nodes == profile.nodes


def test_a_phone_that_disconnects_mid_run_keeps_the_completed_runs(converted):
    phone = FakePhone(disconnect_after=4)   # warm-up + 3 measured runs, then the cable is pulled
    target = PhoneTarget(f"iphone:{PHONE_UDID}?granularity=model", phone_api=_fake_api(phone))
    try:
        profile, _ = _profile(target, converted, runs=8)
    finally:
        target.close()
    assert not profile.complete and profile.runs_completed == 3
    assert "disconnected" in profile.error and "reconnect" in profile.error
    assert len(profile.end_to_end.samples_ms) == 3


def test_cancel_stops_between_predictions_and_keeps_them(converted):
    phone = FakePhone()
    cancel = threading.Event()
    target = PhoneTarget(f"iphone:{PHONE_NAME}?granularity=model", phone_api=_fake_api(phone))
    settings = ProfileSettings(mode="deployed", runs=10, warmup=0)
    try:
        target.prepare(converted, settings)

        def progress(done, total, message):
            if done >= 2:
                cancel.set()

        profile = target.profile(settings, progress, cancel)
    finally:
        target.close()
    assert profile.runs_completed == 2 and not profile.complete and profile.error == "cancelled"
    assert phone.predictions == 2


@pytest.mark.parametrize("problem, words", [
    ("locked", ["locked", "unlock"]),
    ("not_installed", ["ModelRunner is not installed", "installs it again"]),
    ("no_team", ["signing team", "--team", "LAYERSCOPE_TEAM_ID", "Developer Mode", "Xcode"]),
])
def test_phone_problems_say_what_to_do(converted, monkeypatch, problem, words):
    phone = FakePhone(not_installed=problem == "not_installed")
    if problem == "no_team":
        monkeypatch.delenv("LAYERSCOPE_TEAM_ID")
    target = PhoneTarget(f"iphone:{PHONE_NAME}", phone_api=_fake_api(phone, locked=problem == "locked"))
    try:
        with pytest.raises(TargetError) as caught:
            target.prepare(converted, ProfileSettings(mode="deployed", runs=2, warmup=0))
    finally:
        target.close()
    message = str(caught.value)
    assert all(word in message for word in words), message
    assert "Traceback" not in message


def test_exact_mode_on_core_ml_says_what_core_ml_can_and_cannot_do(converted):
    target = PhoneTarget(f"iphone:{PHONE_NAME}", phone_api=_fake_api(FakePhone()))
    try:
        with pytest.raises(TargetError) as caught:
            target.prepare(converted, ProfileSettings(mode="exact"))
    finally:
        target.close()
    message = str(caught.value)
    assert "no exact mode" in message and "compute plan" in message and "--mode deployed" in message


def test_an_unknown_phone_name_lists_the_connected_ones(converted):
    target = PhoneTarget("iphone:Nobody's iPad", phone_api=_fake_api(FakePhone()))
    try:
        with pytest.raises(TargetError, match=rf"no iPhone or iPad .* known: {PHONE_NAME} \({PHONE_UDID}\)"):
            target.prepare(converted, ProfileSettings(mode="deployed"))
    finally:
        target.close()


# ----------------------------------------------------------------------------- pieces, on real objects

def test_prefix_models_are_cut_saved_and_read_back_for_real(converted, tmp_path):
    """_truncated_spec: the prefix ends at the cut, outputs every tensor live across it, and is a
    valid package (saved by coremltools and re-read by our importer)."""
    package = open_model(converted)
    analysis = analyze(package)
    graph = package.main_graph
    spec = ct.utils.load_spec(str(converted))
    weights = ct.models.MLModel(str(converted), skip_model_load=True).weights_dir
    ops = [n.id for n in graph.nodes if n.id in analysis.nodes and not analysis.nodes[n.id].is_constant]
    stage_end = next(s.node_ids[-1] for s in analysis.stages if s.name == "encoder")
    for cut in (ops[2], stage_end):
        prefix_spec = _truncated_spec(spec, cut, graph)
        path = tmp_path / f"prefix-{ops.index(cut)}.mlpackage"
        ct.models.MLModel(prefix_spec, weights_dir=weights, skip_model_load=True).save(str(path))
        prefix = open_model(path).main_graph
        position = [n.id for n in graph.nodes].index(cut)
        kept = {n.id for n in graph.nodes[:position + 1]}
        assert prefix.nodes[-1].id == cut and {n.id for n in prefix.nodes} <= kept
        later = {v for n in graph.nodes[position + 1:] for v in n.inputs} | set(graph.outputs)
        live = [v for n in graph.nodes[:position + 1] for v in n.outputs if v in later]
        assert list(prefix.outputs) == live and live
        for name in live:  # shapes and dtypes of the outputs come from the program
            assert prefix.value_type(name).shape == graph.value_type(name).shape


def test_segments_from_prefixes_are_derived_beside_measured_prefixes():
    segments = segments_from_prefixes([("encoder", [3.0, 2.0, 2.5]), ("decoder", [5.5, 4.0, 5.0]),
                                       ("head", [6.0, 4.4, 5.1])])
    assert segments["encoder"].kind == MEASURED and segments["encoder"].samples == (2.0, 2.5, 3.0)
    assert segments["decoder"].kind == DERIVED and segments["decoder"].samples == (2.0, 2.5, 2.5)
    assert segments["decoder"].prefix_samples == (4.0, 5.0, 5.5)
    assert segments["head"].samples == pytest.approx((0.4, 0.1, 0.5))


def test_attribution_by_cost_weight_on_the_phone_plan(converted):
    """Per-op times: the measured total times cost weight / group total, units planned; ops the
    plan leaves out are weighted by FLOPs and have an unknown unit."""
    package = open_model(converted)
    analysis = analyze(package)
    spec = ct.utils.load_spec(str(converted))
    plan = rd.ComputePlan.from_dict({"infos": [i.to_dict() for i in _plan_infos(spec, ("relu6",))]})
    units, details = plan_from_remote(plan)
    ops = [m.node_id for m in analysis.compute_nodes() if m.node_id in units]
    assert ops and all(details[o]["supported"] == ["CPU", "GPU", "NeuralEngine"] for o in ops)
    samples = [10.0, 11.0, 12.0]
    groups, nodes = split_measured_groups(package.main_graph, analysis, units, {"model": tuple(ops)},
                                          {"model": samples}, {})
    total_weight = sum(units[o][1] for o in ops)
    by_id = {n.node_id: n for n in nodes}
    for op in ops:
        assert by_id[op].time.median_ms == pytest.approx(11.0 * units[op][1] / total_weight)
        assert by_id[op].kind == ATTRIBUTED and by_id[op].compute_unit_kind == PLANNED
    assert sum(n.time.median_ms for n in nodes) == pytest.approx(11.0)
    assert groups[0].time.kind == MEASURED


# ----------------------------------------------------------------------------- listing

def _fake_xcrun(folder: Path, devices: list) -> Path:
    """`xcrun` and `devicectl` executables that answer `xcrun devicectl list devices -j FILE` as Xcode does."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "xcrun"
    script.write_text(f"""#!{sys.executable}
import json, sys
args = sys.argv[1:]
if args[:3] != ["devicectl", "list", "devices"]:
    sys.stderr.write("unsupported: " + " ".join(args)); sys.exit(64)
path = args[args.index("-j") + 1]
json.dump({{"info": {{"outcome": "success"}}, "result": {{"devices": {json.dumps(devices)}}}}}, open(path, "w"))
""")
    (folder / "devicectl").write_text("#!/bin/sh\nexit 0\n")
    for name in ("xcrun", "devicectl"):
        (folder / name).chmod((folder / name).stat().st_mode | stat.S_IEXEC)
    return folder


def test_devicectl_listing_gives_phones_with_what_keeps_them_from_running(tmp_path, monkeypatch):
    devices = [_devicectl_device(PHONE_NAME, PHONE_UDID),
               _devicectl_device("Old iPad", "00008020-0011223344556677", kind="iPad", tunnel="disconnected",
                                 developer_mode="disabled"),
               {"identifier": "MAC", "deviceProperties": {"name": "This Mac"},
                "hardwareProperties": {"deviceType": "Mac", "udid": "MAC-UDID"}, "connectionProperties": {}}]
    bin_dir = _fake_xcrun(tmp_path / "bin", devices)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    entries, notes = list_phones(ModelRunnerApi())   # coremltools' own devicectl runner, our parsing
    assert not notes
    assert [e["name"] for e in entries] == [PHONE_NAME, "Old iPad"]
    phone, ipad = entries
    assert phone["udid"] == PHONE_UDID and phone["model"] == "iPhone 15 Pro" and phone["os_version"] == "18.1"
    assert phone["ready"] and "CPU_AND_NE" in phone["compute_units"]
    assert not ipad["ready"] and "Developer Mode" in ipad["detail"] and "not connected" in ipad["detail"]
    # the same JSON is what coremltools' Device.get_devices reads
    assert {d.udid for d in rd.Device.get_devices()} == {PHONE_UDID, "00008020-0011223344556677", "MAC-UDID"}


def test_linux_says_how_to_reach_a_phone_through_a_mac(sample_model):
    if sys.platform == "darwin":
        pytest.skip("the note is for systems without Xcode")
    entries, notes = list_phones()
    assert entries == [] and len(notes) == 1
    assert "layerscope agent" in notes[0] and "Mac" in notes[0] and "device=" in notes[0]
    target = get_target(f"iphone:{PHONE_NAME}")
    try:
        with pytest.raises(TargetError, match="run on a Mac.*layerscope agent"):
            target.prepare(sample_model, ProfileSettings(mode="deployed"))
    finally:
        target.close()


def test_first_use_message_names_everything_needed():
    for needed in ("Xcode", "team id", "--team", "LAYERSCOPE_TEAM_ID", "--save-team", "unlocked", "Trust",
                   "Developer Mode", "ModelRunner"):
        assert needed in FIRST_USE
    assert "LayerScope app" not in FIRST_USE.replace("no LayerScope app", "")
    assert "layerscope agent" in LINUX_HINT


# ----------------------------------------------------------------------------- compute-unit sweep

def test_compute_unit_sweep_answers_from_which_size_the_gpu_beats_the_cpu(sample_model):
    from engine.sweep import crossover, sweep_compute_units
    phone = FakePhone(unit_costs=True)
    api = _fake_api(phone)
    kept = []
    rows = sweep_compute_units(sample_model, f"iphone:{PHONE_NAME}?granularity=model", ["CPU_ONLY", "CPU_AND_GPU"],
                               ["64x64", "160x160"], ProfileSettings(mode="deployed", runs=3, warmup=1),
                               keep_profiles=kept, target_factory=lambda address: PhoneTarget(address, phone_api=api))
    assert [(r["series"], r["setting"]) for r in rows] == [("CPU_ONLY", "64x64"), ("CPU_ONLY", "160x160"),
                                                           ("CPU_AND_GPU", "64x64"), ("CPU_AND_GPU", "160x160")]
    assert all(r["complete"] and r["kind"] == MEASURED for r in rows)
    assert [p.target["compute_unit"] for p, _ in kept] == ["CPU_ONLY", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_GPU"]
    by = {(r["series"], r["setting"]): r["median_ms"] for r in rows}
    assert by[("CPU_ONLY", "64x64")] < by[("CPU_AND_GPU", "64x64")]
    assert by[("CPU_AND_GPU", "160x160")] < by[("CPU_ONLY", "160x160")]
    assert crossover(rows) == "160x160"


# ----------------------------------------------------------------------------- USB (pymobiledevice3's seam)

FAKE_PYMOBILEDEVICE3 = {
    "__init__.py": "",
    "usbmux.py": '''
import os, socket

class FakeUsbDevice:
    """A USB iPhone as pymobiledevice3's usbmux lists it; its device ports are forwarded to
    127.0.0.1:$FAKE_DEVICE_PORT_TARGET when set (an agent standing in for one on the device)."""
    connection_type = "USB"

    def __init__(self, serial):
        self.serial = serial

    def connect(self, port):
        target = os.environ.get("FAKE_DEVICE_PORT_TARGET")
        if not target:
            raise ConnectionRefusedError(61, f"device port {port} refused the connection")
        return socket.create_connection(("127.0.0.1", int(target)))

def list_devices():
    return [FakeUsbDevice(os.environ["FAKE_UDID"])]

def select_device(udid):
    return FakeUsbDevice(udid) if udid == os.environ["FAKE_UDID"] else None
''',
    "lockdown.py": '''
class FakeLockdown:
    all_values = {"DeviceName": "Test iPhone", "ProductType": "iPhone16,1", "ProductVersion": "18.1"}
    display_name = "iPhone 15 Pro"

def create_using_usbmux(serial=None, autopair=False):
    return FakeLockdown()
''',
}


def _fake_usb_env(tmp_path: Path, **extra) -> dict:
    package = tmp_path / "fake_site" / "pymobiledevice3"
    package.mkdir(parents=True)
    for name, text in FAKE_PYMOBILEDEVICE3.items():
        (package / name).write_text(text)
    env = dict(os.environ, PYTHONPATH=f"{package.parent}{os.pathsep}{REPO}", FAKE_UDID=PHONE_UDID, **extra)
    env.pop("LAYERSCOPE_AGENT_TOKEN", None)
    return env


def _layerscope(env: dict, *args, timeout: float = 180.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_devices_on_linux_lists_a_usb_iphone_and_says_how_to_profile_it(tmp_path):
    if sys.platform == "darwin":
        pytest.skip("on a Mac the phones come from devicectl")
    result = _layerscope(_fake_usb_env(tmp_path), "devices", "--no-mdns", "--timeout", "0.5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    usb = [i for i, line in enumerate(lines) if line.startswith("usb ")]
    assert len(usb) == 1 and "Test iPhone" in lines[usb[0]] and "iOS 18.1" in lines[usb[0]]
    assert f"usb://{PHONE_UDID}:7878" in lines[usb[0]]
    hint = lines[usb[0] + 1]
    assert "layerscope agent" in hint and "Mac" in hint and f"device={PHONE_UDID}" in hint
    assert "agent app" not in result.stdout and "open the LayerScope" not in result.stdout


def test_usb_connection_failure_names_its_cause(tmp_path, sample_model):
    result = _layerscope(_fake_usb_env(tmp_path), "profile", str(sample_model), "--target",
                         f"usb://{PHONE_UDID}:7878", "--runs", "1", "--warmup", "0")
    assert result.returncode != 0
    assert "refused the connection" in result.stderr and "device port 7878" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_usb_profile_keeps_the_device_udid_in_its_address(tmp_path, sample_model):
    from tests.bridge_conformance.bridge_wire import start_agent_process, stop_agent_process
    agent = start_agent_process(tmp_path / "agent")
    try:
        port = agent.address.rsplit(":", 1)[1]
        out = tmp_path / "usb.json"
        result = _layerscope(_fake_usb_env(tmp_path, FAKE_DEVICE_PORT_TARGET=port), "profile", str(sample_model),
                             "--target", f"usb://{PHONE_UDID}:7878", "--runs", "2", "--warmup", "1",
                             "--json", str(out))
    finally:
        stop_agent_process(agent)
    assert result.returncode == 0, result.stderr
    profile = Profile.load_json(out)
    assert profile.target["address"] == f"usb://{PHONE_UDID}:7878"


def test_a_linux_agent_asked_for_a_phone_says_a_mac_is_needed(tmp_path, sample_model):
    """The `device` field of load, over the real protocol: accepted, and answered with the reason."""
    from tests.bridge_conformance.bridge_wire import start_agent_process, stop_agent_process
    if sys.platform == "darwin":
        pytest.skip("a Mac agent would try the phone")
    agent = start_agent_process(tmp_path / "agent")
    target = get_target(f"{agent.address}?device={PHONE_UDID}")
    try:
        description = target._connect().describe()
        coreml = next(b for b in description["backends"] if b["name"] == "coreml")
        assert coreml["devices"] == [] and "Mac" in coreml["device_notes"][0]
        with pytest.raises(TargetError) as caught:
            target.prepare(sample_model, ProfileSettings(mode="deployed", runs=1, warmup=0))
    finally:
        target.close()
        stop_agent_process(agent)
    message = str(caught.value)
    assert "Core ML runs only on macOS" in message and "layerscope agent" in message


def test_a_model_core_ml_did_not_compile_gives_no_compiled_path_and_says_why(converted):
    """coremltools 9 raises from get_compiled_model_path instead of returning None (backends.py used to
    let that escape); here the package is read without loading, as on any OS without Core ML."""
    from engine.bridge.backends import _compiled_model_path
    warnings: list[str] = []
    model = ct.models.MLModel(str(converted), skip_model_load=True)
    assert _compiled_model_path(model, warnings) is None
    assert len(warnings) == 1 and "no compiled model" in warnings[0] and "compute plan" in warnings[0]
