"""An ONNX model parsed a piece at a time (importers.protowire.parse_in_pieces) is the model one parse
gives, and the thread parsing it hands the GIL over between pieces (issue 14: a fresh app's first open
of a 22 MB model froze its window ~50 ms in one parse call)."""
from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

import importers.protowire as protowire
from benchmarks.bench_gui_open import residual_model
from conftest import LIGHT_ZOO, PYTORCH_CONVERTED
from engine.ir import ModelLoadError
from engine.transformer_samples import TransformerConfig, write_transformer
from importers import open_model
from importers.onnx_proto import ModelProto
from tests.engine.gil_holds import longest_hold_ms

WHOLE = 10 ** 12  # PIECE_BYTES that makes every model one piece: one FromString call


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    config = TransformerConfig(layers=3, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=100,
                               style="per_head_qdq")
    return write_transformer(tmp_path_factory.mktemp("pieces") / "qdq.onnx", config)


def _merged_pieces(data: bytes) -> ModelProto:
    """The pieces merged one by one, with no fallback to a whole parse (which would hide a bad cut)."""
    message = ModelProto()
    for piece in protowire._pieces(data, 7):
        message.MergeFromString(piece)
    return message


@pytest.mark.parametrize("piece_bytes", [1, 300, 4096])
def test_the_shipped_models_parsed_in_pieces_are_the_whole_parse(monkeypatch, transformer, piece_bytes):
    monkeypatch.setattr(protowire, "PIECE_BYTES", piece_bytes)
    for path in [*LIGHT_ZOO, *PYTORCH_CONVERTED[:12], transformer]:
        data = path.read_bytes()
        whole = ModelProto.FromString(data)
        pieces = list(protowire._pieces(data, 7))
        assert len(pieces) > 1 or len(data) <= piece_bytes, path
        merged = _merged_pieces(data)
        assert merged == whole, path
        assert merged.SerializeToString() == whole.SerializeToString(), path  # the same field order too
        assert protowire.parse_in_pieces(ModelProto, data, 7) == whole, path


def test_a_graph_given_twice_merges_as_in_one_parse(monkeypatch, transformer):
    # Protobuf's rule the pieces rely on: a message field given again is merged (lists appended,
    # singular fields: the last wins).  Two models back to back parse as their merge.
    monkeypatch.setattr(protowire, "PIECE_BYTES", 500)
    first = transformer.read_bytes()
    second = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="/extra/Relu")], "renamed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]), producer_name="second").SerializeToString()
    data = first + second
    whole = ModelProto.FromString(data)
    assert whole.graph.name == "renamed" and whole.producer_name == "second"
    assert _merged_pieces(data) == whole
    assert protowire.parse_in_pieces(ModelProto, data, 7) == whole


def test_the_importer_builds_the_same_model_from_pieces(monkeypatch, transformer):
    monkeypatch.setattr(protowire, "PIECE_BYTES", WHOLE)
    whole = open_model(transformer)
    monkeypatch.setattr(protowire, "PIECE_BYTES", 256)
    assert open_model(transformer) == whole


def _load_error(path) -> str:
    with pytest.raises(ModelLoadError) as info:
        open_model(path)
    return str(info.value)


def test_a_malformed_file_gives_the_error_one_parse_gives(monkeypatch, tmp_path, transformer):
    data = transformer.read_bytes()
    graph = next(f for f in protowire.iter_fields(data) if f.number == 7)
    node = protowire.find_fields(data, 1, graph.start, graph.end)[40]
    broken = {
        "truncated": data[:len(data) * 2 // 3],
        "cut before its last byte": data[:-1],
        # A node claiming more bytes than the graph has left: the walk stops at it.
        "node too long": data[:node[0] + 1] + protowire.encode_varint(len(data)) + data[node[1]:],
        # Wire type 7 (none) inside a node: the walk steps over the node, a piece's parse fails.
        "bad node content": data[:node[1]] + b"\x0f" + data[node[1] + 1:],
    }
    for name, content in broken.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(content)
        monkeypatch.setattr(protowire, "PIECE_BYTES", WHOLE)
        expected = _load_error(path)
        monkeypatch.setattr(protowire, "PIECE_BYTES", 200)
        assert _load_error(path) == expected, name
        assert str(path) in expected and ("truncated ONNX model" in expected or "damaged ONNX model" in expected), expected


def test_parsing_a_big_model_in_pieces_hands_the_gil_over(monkeypatch, tmp_path):
    # 60,000 nodes, 5.5 MB: one parse holds the GIL ~10-25 ms; a piece of 64 KB well under 1 ms.
    data = residual_model(tmp_path / "residual60k.onnx", 60_000).read_bytes()
    parsed = []

    def parse() -> None:
        parsed.append(protowire.parse_in_pieces(ModelProto, data, 7))

    longest = {}
    for size in (WHOLE, 1 << 16) * 3:  # interleaved; the least of 3 (load only adds)
        monkeypatch.setattr(protowire, "PIECE_BYTES", size)
        longest[size] = min(longest.get(size, float("inf")), longest_hold_ms(parse))
        if size != WHOLE:
            assert len(list(protowire._pieces(data, 7))) > 50  # parsed in pieces, not by the fallback
    assert all(message == parsed[0] for message in parsed[1:])
    assert len(parsed[0].graph.node) == 60_000
    print(f"\nlongest GIL hold while a 60,000-node model ({len(data) / 1e6:.1f} MB) is parsed: "
          f"{longest[WHOLE]:.1f} ms of CPU whole, {longest[1 << 16]:.1f} ms in pieces of 64 KB")
    assert longest[1 << 16] < 0.5 * longest[WHOLE]


def test_a_model_of_a_few_megabytes_is_parsed_in_pieces_too(tmp_path):
    # 20,000 nodes, ~3 MB: one parse call (~13 ms of CPU here) took tens of ms of wall time in a fresh
    # app's first second (docs/benchmarks.md, eighth round), long enough with the window's first paint
    # to stall it over 100 ms.  Above one piece (1 MB), the importer's
    # parse is made in pieces; the bound is loose (pieces of 1 MB: about a third of a whole parse each).
    data = residual_model(tmp_path / "residual20k.onnx", 20_000).read_bytes()
    assert protowire.PIECE_BYTES < len(data) <= 4 * protowire.PIECE_BYTES
    assert len(list(protowire._pieces(data, 7))) >= 2
    from importers.onnx import _parse

    parsed, longest = [], {}
    for name, parse in (("whole", ModelProto.FromString), ("importer", _parse)) * 3:  # the least of 3
        longest[name] = min(longest.get(name, float("inf")), longest_hold_ms(lambda: parsed.append(parse(data))))
    assert all(message == parsed[0] for message in parsed[1:])
    print(f"\nlongest GIL hold while a 20,000-node model ({len(data) / 1e6:.1f} MB) is parsed: "
          f"{longest['whole']:.1f} ms of CPU in one call, {longest['importer']:.1f} ms as the importer parses it")
    assert longest["importer"] < 0.7 * longest["whole"]


def test_onnx_reads_what_the_pieces_give(monkeypatch, transformer):
    # The onnx package's own parse agrees (another reader of the same bytes).
    monkeypatch.setattr(protowire, "PIECE_BYTES", 128)
    ours = protowire.parse_in_pieces(ModelProto, transformer.read_bytes(), 7)
    assert ours.SerializeToString() == onnx.load(transformer, load_external_data=False).SerializeToString()
