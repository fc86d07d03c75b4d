"""The Run dialog's Android phones: listed from adb, the benchmark_model and delegate fields, a run through
the CLI child process against a fake adb server (tests/engine/fake_adb_server.py; SYNTHETIC device times)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("adbutils")
pytest.importorskip("ai_edge_litert")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from fake_adb_server import FakeAdbServer, FakePhone, elf_header, phone_properties  # noqa: E402
from test_android import MODEL, fake_benchmark_model  # noqa: E402

from engine.targets import ProfileSettings, TargetError, get_target  # noqa: E402
from gui.run_dialog import ProfileProcess, RunDialog, profile_command  # noqa: E402
from tests.gui.gui_fixtures import open_and_wait, settings, window  # noqa: E402,F401

SERIAL = "R5CT1234ABC"


@pytest.fixture()
def adb(monkeypatch):
    server = FakeAdbServer([FakePhone(SERIAL, properties=phone_properties(), program=fake_benchmark_model),
                            FakePhone("0B191JEC2", state="unauthorized")])
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(server.port))
    monkeypatch.delenv("LAYERSCOPE_BENCHMARK_MODEL", raising=False)
    yield server
    server.close()


def test_android_phones_are_targets_with_their_fields(qtbot, adb, tmp_path):
    dialog = RunDialog()
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: not dialog.looking_for_phones(), timeout=20_000)
    items = {dialog.target_combo.itemData(i): dialog.target_combo.itemText(i)
             for i in range(dialog.target_combo.count())}
    assert "Tensor G3" in items[f"android:{SERIAL}"] and "unauthorized" in items["android:0B191JEC2"]
    dialog.set_model(str(MODEL), model_format="tflite")
    assert not dialog.form.isRowVisible(dialog.benchmark_field)
    dialog.target_combo.setCurrentIndex(dialog.target_combo.findData(f"android:{SERIAL}"))
    assert dialog.form.isRowVisible(dialog.benchmark_field) and dialog.form.isRowVisible(dialog.delegates_field)
    with pytest.raises(TargetError, match="android_aarch64"):
        dialog.request()
    assert not dialog.run_button.isEnabled()
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(elf_header())
    dialog.benchmark_field.setText(str(binary))
    dialog.delegates_field.setText("xnnpack,npu")
    assert "unknown delegate &#x27;npu&#x27;" in dialog.check_label.text()
    dialog.delegates_field.setText("xnnpack,gpu")
    request = dialog.request()
    assert (request.target, request.benchmark_model, request.android_delegates) == \
        (f"android:{SERIAL}", str(binary), "xnnpack,gpu")
    command = profile_command(request, str(tmp_path / "p.json"))
    assert command[command.index("--benchmark-model") + 1] == str(binary)
    assert command[command.index("--android-delegates") + 1] == "xnnpack,gpu"
    dialog.set_model("model.onnx", model_format="onnx")
    assert "open a .tflite model" in dialog.check_label.text()

    # The run: the CLI in a child process, through adbutils to the fake adb server; one profile per delegate.
    process = ProfileProcess(request)
    with qtbot.waitSignal(process.succeeded, timeout=120_000) as outcome:
        process.start()
    delegates = [entry.profile.target["delegate"] for entry in outcome.args[0].entries]
    assert sorted(delegates) == ["gpu", "xnnpack"]
    assert all(len(entry.profile.nodes) == 63 for entry in outcome.args[0].entries)


def test_an_android_profile_reads_mean_and_min_max_in_the_inspector(qtbot, adb, window, tmp_path):  # noqa: F811
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(elf_header())
    target = get_target(f"android:{SERIAL}", benchmark_model=str(binary), delegates="cpu")
    target.prepare(MODEL, ProfileSettings(runs=4, warmup=1))
    profile = target.profile()
    open_and_wait(qtbot, window, MODEL)
    window.add_profile(profile)
    window.view.select_node("0")
    rows = window.inspector.rows()
    section = next(k.split("/")[0] for k in rows if k.endswith("/Time (mean)"))
    assert rows[f"{section}/Time (mean)"] and f"{section}/min / max" in rows
    assert not any(k.endswith("/Time (median)") for k in rows if k.startswith(section + "/"))
    assert "over 4 runs" in rows[f"{section}/Variation (CV)"]
