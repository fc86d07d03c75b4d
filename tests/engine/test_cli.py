"""The `layerscope` command as a person runs it: a real subprocess, real files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import light_model

REQUIRED_NODE_KEYS = {"id", "name", "op_type", "namespace", "stage", "inputs", "outputs", "params", "macs",
                      "flops", "output_bytes"}


def run_cli(*args, cwd=None, module="engine"):
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    env.pop("QT_QPA_PLATFORM", None)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_inspect_default_sample_summary():
    result = run_cli("inspect")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for label in ("Format    onnx", "Params", "MACs", "Peak activation memory", "Stages (share of MACs)",
                  "decoder", "Heaviest 10 layers"):
        assert label in out
    assert "Traceback" not in result.stderr


def test_inspect_json_document(tmp_path):
    target = tmp_path / "resnet.json"
    result = run_cli("inspect", light_model("resnet50"), "--json", target)
    assert result.returncode == 0, result.stderr
    doc = json.loads(target.read_text())
    assert doc["schema"] == "layerscope.inspect/1"
    assert {"nodes", "params", "weight_bytes", "macs", "flops", "peak_activation_bytes"} <= set(doc["totals"])
    assert doc["totals"]["params"] == pytest.approx(25.557e6, rel=0.01)
    assert all({"name", "kind", "node_ids", "macs"} <= set(s) for s in doc["stages"])
    assert all(REQUIRED_NODE_KEYS <= set(n) for n in doc["nodes"])
    assert len(doc["nodes"]) == doc["totals"]["nodes"]
    assert "macs" in doc["conventions"] and "BatchNorm" in doc["conventions"]["params"]
    assert sum(n["macs"] or 0 for n in doc["nodes"]) == doc["totals"]["macs"]


def test_inspect_json_to_stdout_is_pure_json():
    result = run_cli("inspect", "--json", "-")
    assert result.returncode == 0
    assert json.loads(result.stdout)["schema"] == "layerscope.inspect/1"


def test_sample_command_writes_model(tmp_path):
    target = tmp_path / "mu.onnx"
    result = run_cli("sample", "mobileunet", "--alpha", "0.25", "--size", "96", "-o", target)
    assert result.returncode == 0, result.stderr
    onnx.checker.check_model(onnx.load(target))
    bad = run_cli("sample", "mobileunet", "--size", "100", "-o", tmp_path / "bad.onnx")
    assert bad.returncode == 2 and "multiple of 32" in bad.stderr and "Traceback" not in bad.stderr


def _unknown_op_model(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Frobnicate", ["a"], ["y"], name="frob")]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("case", ["truncated", "random", "directory", "unknown_op", "no_input_shape", "missing"])
def test_bad_input_gives_one_clear_line(tmp_path, sample_model, case):
    if case == "truncated":
        path = tmp_path / "cut.onnx"
        path.write_bytes(sample_model.read_bytes()[:5000])
        expected_code, needle = 2, "truncated"
    elif case == "random":
        path = tmp_path / "noise.onnx"
        path.write_bytes(np.random.default_rng(3).bytes(4096))
        expected_code, needle = 2, "not an ONNX model"
    elif case == "directory":
        path = tmp_path / "folder.mlpackage"
        path.mkdir()
        expected_code, needle = 2, "Manifest.json"
    elif case == "unknown_op":
        path = tmp_path / "unknown.onnx"
        _unknown_op_model(path)
        expected_code, needle = 3, "Frobnicate"
    elif case == "no_input_shape":
        path = tmp_path / "noshape.onnx"
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                                    opset_imports=[helper.make_opsetid("", 17)]), path)
        expected_code, needle = 3, "--shape x="
    else:
        path = tmp_path / "absent.onnx"
        expected_code, needle = 2, "no such file"
    result = run_cli("inspect", path)
    assert result.returncode == expected_code, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert needle in result.stderr
    assert str(path) in result.stderr
    if expected_code == 3:  # the summary is still printed; unknown ops are listed, not hidden
        assert "Unknown cost" in result.stdout or "Warnings" in result.stdout


def test_bad_shape_option():
    result = run_cli("inspect", "--shape", "image=1xAx3")
    assert result.returncode == 2 and "--shape" in result.stderr


def test_no_display_points_to_headless_commands():
    result = run_cli(module="gui")  # the `layerscope` script: engine's commands plus the app
    assert result.returncode == 2
    assert "no display" in result.stderr and "layerscope inspect" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_engine_alone_prints_help_without_starting_the_app():
    result = run_cli()
    assert result.returncode == 0 and "inspect" in result.stdout and "no display" not in result.stderr


def test_help_names_every_model_format_and_target_a_command_takes():
    top = run_cli("--help").stdout
    assert "CPU reference, agent, iPhone or Android phone" in " ".join(top.split())
    inspect_help, profile_help = (" ".join(run_cli(name, "--help").stdout.split()) for name in ("inspect", "profile"))
    assert ".tflite" in inspect_help and ".pt2" in inspect_help
    assert "or .tflite: LiteRT on this CPU or on an Android phone" in profile_help
    assert "LiteRT for a .tflite" in profile_help and "android:SERIAL" in profile_help


def test_json_without_a_file_name_writes_to_stdout(tmp_path):
    model = tmp_path / "squeezenet.onnx"
    model.write_bytes(light_model("squeezenet").read_bytes())
    before = model.read_bytes()
    for args in (("inspect", str(model), "--json"), ("inspect", "--json", str(model))):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)  # nothing but the JSON on stdout
        assert document["schema"] == "layerscope.inspect/1" and document["model"]["path"].endswith("squeezenet.onnx")
    assert model.read_bytes() == before  # `--json MODEL` read the model, never wrote over it
    result = run_cli("profile", str(model), "--runs", "2", "--warmup", "0", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["schema"] == "layerscope.profile/1"
    assert "slowest" in result.stderr.lower() or "model" in result.stderr.lower()  # the summary moved to stderr
