"""PyTorch .pt2 importer: real torch.export archives (tests/data, written by
tests/data/make_pt2_fixtures.py with PyTorch 2.13) read without PyTorch, and crafted archives
that must be refused or opened without running anything."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import importers
from engine.analysis import analyze
from engine.ir import ModelLoadError
from importers import pt2

DATA = Path(__file__).resolve().parents[1] / "data"
SMALL_CNN = DATA / "small_cnn.pt2"
SMALL_CNN_CORE = DATA / "small_cnn_core_aten.pt2"
TRANSFORMER = DATA / "transformer_block.pt2"
TRANSFORMER_DYNAMIC = DATA / "transformer_block_dynamic.pt2"

# Hand counts for SmallCnn (input 1x3x32x32): MACs = output elements x (Cin x kh x kw).
STEM_CONV_MACS = (8 * 32 * 32) * (3 * 3 * 3)     # 221,184
BLOCK_CONV_MACS = (16 * 8 * 8) * (8 * 3 * 3)     # 73,728
HEAD_MACS = 10 * 16
CNN_PARAMS = (8 * 3 * 3 * 3 + 8) + (8 + 8) + (16 * 8 * 3 * 3 + 16) + (10 * 16 + 10)
# TransformerBlock (1x8x32, 2 heads of 16): four 32x32 projections, MLP 32->64->32, two attention matmuls.
TRANSFORMER_MACS = 4 * (8 * 32 * 32) + 2 * (8 * 32 * 64) + 2 * (2 * 8 * 8 * 16)


def test_small_cnn_graph_namespaces_and_shapes():
    model = importers.open_model(SMALL_CNN)
    graph = model.main_graph
    assert model.format == "pt2" and model.warnings == ()
    assert [n.op_type for n in graph.nodes] == ["Conv", "BatchNormalization", "Relu", "MaxPool", "Conv",
                                                 "Relu", "ReduceMean", "Gemm"]
    assert [n.namespace for n in graph.nodes] == ["stem/0", "stem/1", "stem/2", "pool", "block/0", "block/1",
                                                  "", "head"]
    assert graph.inputs == ("x",) and graph.outputs == ("linear",)
    assert graph.value_type("x").shape == (1, 3, 32, 32)
    assert graph.value_type("max_pool2d").shape == (1, 8, 16, 16)
    assert graph.value_type("linear").shape == (1, 10) and graph.value_type("linear").dtype == "float32"
    conv = graph.node("conv2d")
    assert conv.attributes["target"] == "torch.ops.aten.conv2d.default"
    assert conv.attributes["padding"] == (1, 1)
    assert graph.node("max_pool2d").attributes["kernel_shape"] == (2, 2)


def test_small_cnn_costs_match_a_hand_count():
    analysis = analyze(importers.open_model(SMALL_CNN))
    assert analysis.nodes["conv2d"].macs == STEM_CONV_MACS
    assert analysis.nodes["conv2d_1"].macs == BLOCK_CONV_MACS
    assert analysis.nodes["linear"].macs == HEAD_MACS
    assert analysis.totals.macs == STEM_CONV_MACS + BLOCK_CONV_MACS + HEAD_MACS
    assert analysis.totals.params == CNN_PARAMS
    assert analysis.totals.buffers == 8 + 8  # BatchNorm running mean and variance
    assert analysis.totals.unknown_cost_nodes == ()


def test_weights_are_located_in_the_archive_not_read():
    graph = importers.open_model(SMALL_CNN).main_graph
    weight = graph.values["p_stem_0_weight"]
    location = weight.initializer.location
    assert weight.type.shape == (8, 3, 3, 3) and location.kind == "embedded"
    assert location.length == 8 * 3 * 3 * 3 * 4
    with zipfile.ZipFile(SMALL_CNN) as archive:
        config = json.loads(archive.read("small_cnn/data/weights/model_weights_config.json"))
        stored = archive.read("small_cnn/data/weights/" + config["config"]["stem.0.weight"]["path_name"])
    with open(SMALL_CNN, "rb") as handle:
        handle.seek(location.offset)
        assert handle.read(location.length) == stored


def test_core_aten_program_maps_decomposed_ops():
    """After run_decompositions(): aten.convolution, _native_batch_norm_legit_no_training, addmm."""
    model = importers.open_model(SMALL_CNN_CORE)
    graph = model.main_graph
    assert model.metadata["dialect"] == "ATEN"
    assert graph.node("convolution").op_type == "Conv"
    assert graph.node("_native_batch_norm_legit_no_training").op_type == "BatchNormalization"
    addmm = graph.node("addmm")
    assert addmm.op_type == "Gemm" and addmm.inputs == ("mean", "permute", "p_head_bias")  # bias moved last
    analysis = analyze(model)
    assert analysis.totals.macs == STEM_CONV_MACS + BLOCK_CONV_MACS + HEAD_MACS
    assert analysis.totals.params == CNN_PARAMS and analysis.totals.buffers == 16


def test_transformer_block_folds_by_module():
    model = importers.open_model(TRANSFORMER)
    graph = model.main_graph
    assert len(graph.nodes) == 24
    namespaces = {n.namespace for n in graph.nodes}
    assert {"norm1", "attn", "attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/out_proj", "norm2",
            "mlp/0", "mlp/1", "mlp/2"} <= namespaces
    assert graph.node("matmul").op_type == "MatMul" and graph.node("matmul").namespace == "attn"
    assert graph.value_type("matmul").shape == (1, 2, 8, 8)
    analysis = analyze(model)
    assert analysis.nodes["matmul"].macs == 2 * 8 * 8 * 16
    assert analysis.totals.macs == TRANSFORMER_MACS
    assert analysis.totals.unknown_cost_nodes == ()


def test_symbolic_dimensions_warn_and_are_fixed_by_shape():
    model = importers.open_model(TRANSFORMER_DYNAMIC)
    assert any("symbolic dimensions (s27 in 2..512)" in w and "--shape x=" in w for w in model.warnings)
    assert model.main_graph.value_type("x").shape == (1, "s27", 32)
    assert analyze(model).totals.unknown_cost_nodes  # unknown, not guessed

    fixed = importers.open_model(TRANSFORMER_DYNAMIC, {"x": (1, 8, 32)})
    assert fixed.warnings == ()
    assert fixed.main_graph.value_type("matmul").shape == (1, 2, 8, 8)
    assert analyze(fixed).totals.macs == TRANSFORMER_MACS

    with pytest.raises(ModelLoadError, match="fixed at 32"):
        importers.open_model(TRANSFORMER_DYNAMIC, {"x": (1, 8, 64)})
    with pytest.raises(ModelLoadError, match="inputs are: x"):
        importers.open_model(TRANSFORMER_DYNAMIC, {"image": (1, 8, 32)})


def test_unknown_aten_op_keeps_its_name_and_warns(tmp_path):
    path = _rewritten(tmp_path / "cumprod.pt2", SMALL_CNN, lambda program: _retarget(program, "relu",
                                                                                     "torch.ops.aten.cumprod.default"))
    model = importers.open_model(path)
    assert model.main_graph.node("relu").op_type == "aten.cumprod"
    assert any("'aten.cumprod'" in w and "cost unknown" in w for w in model.warnings)
    assert "relu" in analyze(model).totals.unknown_cost_nodes


def test_content_sniffing_finds_a_renamed_archive(tmp_path):
    renamed = tmp_path / "exported.bin"
    renamed.write_bytes(SMALL_CNN.read_bytes())
    assert importers.importer_for(renamed) is pt2
    assert len(importers.open_model(renamed).main_graph.nodes) == 8


def test_cli_inspect_opens_a_pt2(tmp_path):
    target = tmp_path / "cnn.json"
    result = subprocess.run([sys.executable, "-m", "engine", "inspect", str(SMALL_CNN), "--json", str(target)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(target.read_text())
    assert document["model"]["format"] == "pt2"
    assert document["totals"]["macs"] == STEM_CONV_MACS + BLOCK_CONV_MACS + HEAD_MACS


def test_cli_json_option_given_a_pt2_reads_it_instead_of_writing_over_it(tmp_path):
    copy = tmp_path / "cnn.pt2"
    copy.write_bytes(SMALL_CNN.read_bytes())
    result = subprocess.run([sys.executable, "-m", "engine", "inspect", "--json", str(copy)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"]["format"] == "pt2"
    assert copy.read_bytes() == SMALL_CNN.read_bytes()


# ----------------------------------------------------------------------------- bad input

def test_truncated_archive_names_the_problem(tmp_path):
    data = SMALL_CNN.read_bytes()
    path = tmp_path / "truncated.pt2"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as info:
        importers.open_model(path)
    assert str(path) in str(info.value) and "truncated" in str(info.value)


def test_not_a_zip_with_pt2_extension(tmp_path):
    path = tmp_path / "text.pt2"
    path.write_text("hello, not an archive\n")
    with pytest.raises(ModelLoadError, match="not a .pt2 archive: not a readable zip file"):
        importers.open_model(path)


def test_zip_without_a_program_is_refused(tmp_path):
    path = tmp_path / "other.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "just a zip")
    with pytest.raises(ModelLoadError, match="no models/<name>.json"):
        importers.open_model(path)


def test_invalid_program_json_names_the_member(tmp_path):
    path = tmp_path / "broken.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("broken/archive_format", "pt2")
        archive.writestr("broken/models/model.json", '{"graph_module": {"graph": ')
    with pytest.raises(ModelLoadError, match=r"models/model.json is not valid JSON"):
        importers.open_model(path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("broken/models/model.json", '{"schema_version": 8}')
    with pytest.raises(ModelLoadError, match="has no 'graph_module'"):
        importers.open_model(path)


def test_zip_bomb_is_refused_before_it_is_expanded(tmp_path):
    path = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/models/model.json", b" " * (64 << 20))  # 64 MiB -> about 64 KiB
    assert path.stat().st_size < 1 << 20
    with pytest.raises(ModelLoadError, match="zip bomb"):
        importers.open_model(path)


def test_deeply_nested_json_is_refused(tmp_path):
    path = tmp_path / "deep.pt2"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("deep/models/model.json", "[" * 200_000 + "]" * 200_000)
    with pytest.raises(ModelLoadError, match="nested too deeply"):
        importers.open_model(path)


def test_program_json_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(pt2, "MAX_JSON_BYTES", 4096)
    with pytest.raises(ModelLoadError, match=r"refused: small_cnn/models/model.json is [\d,]+ bytes"):
        importers.open_model(SMALL_CNN)


# ----------------------------------------------------------------------------- nothing runs

class _WritesAFile:
    """A pickle that, when loaded, writes a marker file: what a malicious archive would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle ran"))


def test_pickle_trap_archive_opens_without_running_anything(tmp_path):
    marker = tmp_path / "pickle-ran.txt"
    trap = pickle.dumps(_WritesAFile(marker))

    def plant(members: dict[str, bytes]) -> None:
        members["small_cnn/data/sample_inputs/model.pt"] = trap
        config_name = "small_cnn/data/weights/model_weights_config.json"
        config = json.loads(members[config_name])
        config["config"]["stem.0.weight"]["use_pickle"] = True  # the weight "is" a pickle
        members[config_name] = json.dumps(config).encode()
        members["small_cnn/data/weights/" + config["config"]["stem.0.weight"]["path_name"]] = trap

    path = _rewritten(tmp_path / "trap.pt2", SMALL_CNN, members_edit=plant)
    model = importers.open_model(path)
    analyze(model)
    assert not marker.exists()
    assert len(model.main_graph.nodes) == 8
    location = model.main_graph.values["p_stem_0_weight"].initializer.location
    assert location.kind == "zip-member"  # named, never read
    # The trap is live: loading it the way torch.load would does write the file.
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=trap, check=True, cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert marker.read_text() == "pickle ran"


def test_legacy_archive_layout_opens_without_its_pickled_state_dict(tmp_path):
    """torch <= 2.5: serialized_exported_program.json beside a pickled serialized_state_dict.pt."""
    marker = tmp_path / "pickle-ran.txt"
    with zipfile.ZipFile(SMALL_CNN) as archive:
        program = archive.read("small_cnn/models/model.json")
    path = tmp_path / "legacy.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("legacy/serialized_exported_program.json", program)
        archive.writestr("legacy/serialized_state_dict.pt", pickle.dumps(_WritesAFile(marker)))
        archive.writestr("legacy/version", "1")
    model = importers.open_model(path)
    assert len(model.main_graph.nodes) == 8 and model.main_graph.name == "model"
    assert model.main_graph.values["p_stem_0_weight"].initializer.location.kind == "unlocated"
    assert analyze(model).totals.params == CNN_PARAMS
    assert not marker.exists()


def test_torch_save_checkpoint_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pickle-ran.txt"
    path = tmp_path / "checkpoint.pt2"
    with zipfile.ZipFile(path, "w") as archive:  # the layout torch.save writes
        archive.writestr("checkpoint/data.pkl", pickle.dumps(_WritesAFile(marker)))
        archive.writestr("checkpoint/version", "3\n")
    with pytest.raises(ModelLoadError, match="torch.save checkpoint .a pickle., which LayerScope never unpickles"):
        importers.open_model(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- helpers

def _rewritten(path: Path, source: Path, program_edit=None, members_edit=None) -> Path:
    """A copy of `source` with its program JSON and/or members changed (weights stay stored)."""
    with zipfile.ZipFile(source) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    if program_edit is not None:
        name = next(n for n in members if n.endswith("models/model.json"))
        program = json.loads(members[name])
        program_edit(program)
        members[name] = json.dumps(program).encode()
    if members_edit is not None:
        members_edit(members)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _retarget(program: dict, node_name: str, target: str) -> None:
    for node in program["graph_module"]["graph"]["nodes"]:
        if node["name"] == node_name:
            node["target"] = target


def test_fixtures_stay_small():
    for path in (SMALL_CNN, SMALL_CNN_CORE, TRANSFORMER, TRANSFORMER_DYNAMIC):
        assert path.stat().st_size < 200_000, path
    assert os.path.exists(DATA / "make_pt2_fixtures.py")
