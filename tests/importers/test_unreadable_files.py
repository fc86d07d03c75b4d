"""Files that are not models, or cut-short ones: the error says so in a person's terms first, and
keeps the parser's detail ("unexpected wire type 4 at byte 2") after it, as the cause."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from engine.ir import ModelLoadError
from importers import open_model

PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02\x00\x00\x00"


def _relu_model(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="first_relu"),
             helper.make_node("Relu", ["a"], ["y"], name="second_relu")]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y])), path)
    return path


def _message(path) -> str:
    with pytest.raises(ModelLoadError) as caught:
        open_model(path)
    assert caught.value.path == str(path)
    return str(caught.value)


def _lead_then_cause(message: str, path, lead: str, cause: str) -> None:
    """The message names the file, then the plain statement, then the technical cause."""
    assert message.startswith(f"{path}: {lead}"), message
    assert message.index(lead) < message.index(cause), message


def test_text_file_named_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("hello world, not a model\n")
    message = _message(path)
    _lead_then_cause(message, path, "not an ONNX model: the file is plain text", "unexpected wire type")


def test_png_named_onnx(tmp_path):
    path = tmp_path / "picture.onnx"
    path.write_bytes(PNG_HEAD + bytes(64))
    _lead_then_cause(_message(path), path, "not an ONNX model: the file is a PNG image", "at byte")


def test_noise_named_onnx(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(3).bytes(4096))
    _lead_then_cause(_message(path), path, "not an ONNX model: the content does not parse as an ONNX protobuf",
                     "at byte")


@pytest.mark.parametrize("keep", [100, 3000, 0.5])
def test_truncated_onnx(tmp_path, sample_model, keep):
    data = sample_model.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    _lead_then_cause(_message(path), path, "truncated ONNX model: the file ends in the middle of the model",
                     "remain")


def test_damaged_inside_onnx(tmp_path):
    """The top-level fields are whole, a node inside the graph is not: damaged, not truncated."""
    data = bytearray(_relu_model(tmp_path / "ok.onnx").read_bytes())
    at = data.index(b"first_relu")
    data[at - 4:at - 2] = b"\xff\xff"  # the node's fields no longer fit in it
    path = tmp_path / "damaged.onnx"
    path.write_bytes(bytes(data))
    _lead_then_cause(_message(path), path, "damaged ONNX model: it starts as one", "Wire format")


def test_protobuf_without_graph(tmp_path):
    path = tmp_path / "tensor.onnx"
    path.write_bytes(b"\x08\x07")  # ir_version 7 and nothing else
    assert _message(path) == f"{path}: not an ONNX model: the content holds no graph " \
                             "(it parses as protobuf, but is some other message)"


@pytest.mark.parametrize("name,content,kind", [("notes.txt", b"just text\n", "plain text"),
                                               ("picture.png", PNG_HEAD, "a PNG image")])
def test_unknown_extension_says_what_the_file_is(tmp_path, name, content, kind):
    path = tmp_path / name
    path.write_bytes(content)
    assert _message(path).startswith(f"{path}: not a model file LayerScope can read: the file is {kind} "
                                     "(supported: .onnx")


def test_text_file_named_mlmodel(tmp_path):
    path = tmp_path / "notes.mlmodel"
    path.write_text("hello world, not a model\n")
    _lead_then_cause(_message(path), path, "not a Core ML model: the file is plain text", "Error parsing")


@pytest.mark.parametrize("case", ["text", "truncated"])
def test_cli_inspect_one_plain_line(tmp_path, sample_model, case):
    path = tmp_path / f"{case}.onnx"
    if case == "text":
        path.write_text("hello world, not a model\n")
        lead, cause = "not an ONNX model: the file is plain text", "(unexpected wire type 4 at byte 2)"
    else:
        path.write_bytes(sample_model.read_bytes()[:3000])
        lead, cause = "truncated ONNX model", "remain)"
    done = subprocess.run([sys.executable, "-m", "engine", "inspect", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"layerscope: {path}: {lead}") and done.stderr.rstrip().endswith(cause), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
