"""Numerics through the bridge: a real `layerscope agent` subprocess on loopback returns intermediates."""
from __future__ import annotations

import math

import numpy as np
import pytest

import numerics_models
from engine.bridge.client import BridgeClient, BridgeError, arrays_from_npz_b64, file_sha256
from engine.numerics import NumericsSettings
from engine.numerics_device import run_device_numerics
from engine.samples import default_sample_path
from tests.bridge_conformance.bridge_wire import start_agent_process, stop_agent_process


@pytest.fixture
def agent(tmp_path):
    handle = start_agent_process(tmp_path / "agent")
    yield handle
    stop_agent_process(handle)


def test_device_intermediates_are_measured_and_match_an_fp32_device(agent, tmp_path):
    model = numerics_models.normalisation_model(tmp_path)
    result = run_device_numerics(model, agent.address, NumericsSettings(mode="device", samples=2))
    assert result.complete and result.samples_compared == 2
    assert result.kind == "measured" and result.mode == "device"
    assert all(layer.kind == "measured" and all(t.kind == "measured" for t in layer.tensors)
               for layer in result.layers.values())
    assert "onnxruntime backend, compute unit CPU" in result.emulation and result.device["address"] == agent.address
    # The agent runs fp32 ONNX Runtime too: its tensors are the reference's (the overflow is still named).
    assert set(result.layers) == {"conv", "square", "variance", "std", "normalise"}
    assert max(layer.error for layer in result.layers.values()) < 1e-6
    assert result.first_departing is None and result.first_overflow == "square"
    assert result.to_json_dict()["kind"] == "measured"


def test_the_sample_in_segments_through_the_agent(agent):
    result = run_device_numerics(default_sample_path(), agent.address,
                                 NumericsSettings(mode="device", segment_bytes=2_000_000))
    assert result.complete and result.settings["segments"] > 5 and len(result.layers) == 92
    assert all(math.isfinite(layer.error) and layer.error < 1e-5 for layer in result.layers.values())


def test_protocol_refusals_name_the_problem(agent, tmp_path):
    model = numerics_models.overflow_model(tmp_path)
    with BridgeClient(agent.address) as client:
        client.connect()
        assert "intermediates" in client.welcome["capabilities"]
        with pytest.raises(BridgeError, match="load a model"):
            client.intermediates(["scaled"])
        upload = client.upload(model)
        client.load(upload.sha256, None, None, {})
        with pytest.raises(BridgeError, match="no tensor 'nothing'"):
            client.intermediates(["nothing"])
        with pytest.raises(BridgeError, match="twice"):
            client.intermediates(["scaled", "scaled"])
        x = np.full((1, 64), 0.5, np.float32)
        from engine.bridge.client import npz_b64
        reply = client.intermediates(["scaled", "squared"], npz_b64({"x": x}))
        arrays = arrays_from_npz_b64(reply["npz_b64"])
        by_name = {t["name"]: arrays[t["key"]] for t in reply["tensors"]}
        assert reply["kind"] == "measured" and np.all(by_name["squared"] == 250000.0)
        assert reply["run_ms"]["kind"] == "measured"
    assert file_sha256(model) == upload.sha256


def test_a_device_lost_midway_keeps_the_layers_compared(agent, tmp_path):
    seen = []

    def kill_after_first(done, total, message):
        seen.append(message)
        if len(seen) == 2:
            agent.process.kill()

    result = run_device_numerics(default_sample_path(), agent.address,
                                 NumericsSettings(mode="device", segment_bytes=2_000_000), progress=kill_after_first)
    assert not result.complete and result.error
    assert 0 < len(result.layers) < 92


def test_cli_target_compares_on_the_device(agent, tmp_path):
    import subprocess
    import sys
    model = numerics_models.overflow_model(tmp_path)
    done = subprocess.run([sys.executable, "-m", "engine", "numerics", str(model), "--target", agent.address,
                           "--json", str(tmp_path / "d.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Compared    measured: device outputs: onnxruntime backend" in done.stdout
    assert "First overflow         square (Mul)" in done.stdout
    unreachable = subprocess.run([sys.executable, "-m", "engine", "numerics", str(model), "--target",
                                  "ws://127.0.0.1:9"], capture_output=True, text=True, timeout=300)
    assert unreachable.returncode == 2 and "Traceback" not in unreachable.stderr
    assert "127.0.0.1:9" in unreachable.stderr
