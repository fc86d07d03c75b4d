"""The bottleneck report on real models: readable layer names, the folded graph, targets side by side,
Markdown for code review.  Profiles are real ONNX Runtime runs of real files (the bundled sample,
DenseNet-121 of the onnx light zoo, small models written here); the 20,000-node model's timings are
estimated from its MACs (benchmarks.bench_report.estimated_profile: profiling 20,000 kernels takes
minutes here) and say so with their kind."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.analysis import analyze
from engine.cli import main as cli_main
from engine.hints import GUIDANCE_MARK
from engine.naming import layer_names, layer_names_for_profile
from engine.profile import Profile
from engine.report import html_report, write_html
from engine.report.folding import MAX_CHILDREN, fold_graph
from engine.targets import ProfileSettings
from importers import open_model
from benchmarks.bench_gui_open import residual_model
from benchmarks.bench_report import estimated_profile, measured_profile
from tests.conftest import light_model

QUICK = ProfileSettings(mode="exact", runs=3, warmup=1, threads=1)


def profile_file(path, settings=QUICK):
    return measured_profile(path, settings)


@pytest.fixture(scope="module")
def sample(sample_model):
    return profile_file(sample_model)


@pytest.fixture(scope="module")
def densenet():
    return profile_file(light_model("densenet121"), ProfileSettings(mode="exact", runs=1, warmup=0, threads=1))


class _Page(HTMLParser):
    """Tags, external references, the graph's data island and the text of every SVG <text>."""

    def __init__(self):
        super().__init__()
        self.external, self.texts, self.graph_data, self._in = [], [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith("#"):
                self.external.append(attrs[key])
        if tag == "script" and attrs.get("id") == "ls-graph-data":
            self._in = "data"
        elif tag == "text":
            self._in = "text"

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "data":
            self.graph_data = json.loads(data)
        elif self._in == "text":
            self.texts.append(data)


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def graph_labels(data: dict) -> dict[int, str]:
    return {k: data["strings"][s] for k, s in enumerate(data["L"]["label"])}


# ---------------------------------------------------------------------------------------------- names

def test_named_layers_keep_their_names_and_unnamed_get_a_path(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="features.conv1"),
             helper.make_node("Relu", ["a"], ["b"]),  # no name
             helper.make_node("Conv", ["b", "w"], ["c"], name="/encoder/block1/Conv"),
             helper.make_node("Relu", ["c"], ["d"], name="n7")]  # a name that only numbers the node
    y = helper.make_tensor_value_info("d", TensorProto.FLOAT, None)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "m", [x], [y], [w]),
                                opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    analysis = analyze(open_model(path))
    names = layer_names(analysis)
    ids = analysis.order
    stage = {i: analysis.nodes[i].stage for i in ids}
    assert names[ids[0]] == "features.conv1 · Conv"
    assert names[ids[1]] == f"{stage[ids[1]]} / Relu #1"
    assert names[ids[2]] == "/encoder/block1/Conv"  # says its op already
    k = 2 if stage[ids[3]] == stage[ids[1]] else 1  # k counts the op within its stage
    assert names[ids[3]] == f"{stage[ids[3]]} / Relu #{k} (n7)"


def test_densenet_layers_are_named_by_path_everywhere(densenet):
    profile, analysis = densenet
    names = layer_names(analysis)
    # The same labels from the profile alone (a report made where the model file is not).
    assert layer_names_for_profile(profile) == {i: names[i] for i in profile.nodes}
    page = html_report(profile, analysis)
    # The slowest Conv (not the slowest layer: on a loaded machine a BatchNorm can come first).
    top_id = next(n.node_id for n in profile.top_nodes(len(profile.nodes))
                  if analysis.graph.node(n.node_id).op_type == "Conv")
    assert re.fullmatch(r"n\d+", top_id)  # the light zoo names its nodes n0, n1, ...
    assert re.fullmatch(rf"encoder / Conv #\d+ \({top_id}\)", names[top_id])
    texts = parse(page).texts
    assert names[top_id] in texts  # the top-layers chart
    assert not any(re.fullmatch(r"n\d+", t.strip()) for t in texts)  # never a bare id as a label
    for hint in profile.hints:  # hints name layers the same way: an id only inside "(...)"
        assert not re.search(r"(?<!\()\bn\d+\b(?!\))", hint["message"]), hint["message"]


# ---------------------------------------------------------------------------------------------- hints

def test_hints_state_evidence_kind_and_mark_general_guidance(sample):
    profile, _ = sample
    assert profile.hints
    for hint in profile.hints:
        assert hint["kind"] in ("measured", "attributed", "estimated")
        assert f"{profile.runs_completed} runs" in hint["evidence"] and " ms" in hint["evidence"]
        if hint["guidance"]:
            assert hint["message"].endswith(GUIDANCE_MARK + hint["guidance"])
    by_rule = {h["rule"]: h for h in profile.hints}
    if "convtranspose_decoder" in by_rule:  # the claim about mobile GPUs is guidance, not a finding
        hint = by_rule["convtranspose_decoder"]
        assert "mobile GPUs" in hint["guidance"]
        assert "mobile GPUs" not in hint["message"].replace(GUIDANCE_MARK + hint["guidance"], "")
    page = html_report(profile, sample[1])
    assert "General guidance, not measured by this profile" in page or not any(h["guidance"] for h in profile.hints)
    assert "Evidence (measured)" in page


# ---------------------------------------------------------------------------------------------- graph

def check_folded(data: dict, profile: Profile, analysis) -> None:
    groups = data["G"]
    assert all(len(children) <= MAX_CHILDREN for children in groups["children"])
    assert groups["layers"][0] == sum(1 for i in analysis.order if not analysis.nodes[i].is_constant)
    # every layer sits in exactly one group's children
    listed = sorted(c for children in groups["children"] for c in children if c >= 0)
    assert listed == list(range(len(data["L"]["label"])))
    # the hottest layers of the profile are the ones ranked and shown inside their groups
    hottest = [n.node_id for n in profile.top_nodes(3)]
    order = [i for i in analysis.order if not analysis.nodes[i].is_constant]
    assert [order[k] for k in data["hot"][:3]] == hottest
    for rank, layer in enumerate(data["hot"][:3]):
        group = next(g for g, children in enumerate(groups["children"]) if layer in children)
        assert layer in groups["hot"][group]
        assert data["L"]["ms"][layer] == pytest.approx(profile.nodes[hottest[rank]].time.median_ms, rel=1e-3)


def test_sample_report_graph_is_folded_by_stage_then_namespace(sample):
    profile, analysis = sample
    page = parse(html_report(profile, analysis))
    assert page.external == []
    data = page.graph_data
    names = [data["strings"][n] for n in data["G"]["name"]]
    root_children = [names[-c - 1] for c in data["G"]["children"][0] if c < 0]
    assert root_children[0] == "encoder" and "decoder" in root_children
    assert "block3" in names  # namespaces inside the stages
    # Edges between groups: the encoder feeds the bottleneck, and the decoder through its skip connections.
    positions = {names[-c - 1]: p for p, c in enumerate(data["G"]["children"][0]) if c < 0}
    root_edges = set(zip(data["G"]["edges"][0][::2], data["G"]["edges"][0][1::2]))
    bottleneck = next(n for n in positions if n.startswith("bottleneck"))
    assert (positions["encoder"], positions[bottleneck]) in root_edges
    assert (positions["encoder"], positions["decoder"]) in root_edges
    check_folded(data, profile, analysis)
    labels = graph_labels(data)
    top = profile.top_nodes(1)[0].node_id
    assert labels[data["hot"][0]] == analysis.graph.node(top).name.rsplit("/", 1)[-1]


def test_densenet_report_graph_splits_a_flat_stage_into_runs(densenet):
    profile, analysis = densenet
    data = parse(html_report(profile, analysis)).graph_data
    check_folded(data, profile, analysis)
    kinds = [data["groupKinds"][k] for k in data["G"]["kind"]]
    assert "run" in kinds and "stage" in kinds
    run_names = [data["strings"][data["G"]["name"][g]] for g, kind in enumerate(kinds) if kind == "run"]
    assert all(re.fullmatch(r"layers \d+–\d+", n) for n in run_names)


def test_report_of_a_20000_node_model_stays_small_and_folded(tmp_path):
    path = residual_model(tmp_path / "residual20k.onnx", 20_000)
    analysis = analyze(open_model(path))
    profile = estimated_profile(analysis, str(path))
    report = write_html(profile, analysis, tmp_path / "r.html")
    size = report.stat().st_size
    assert size < 1_500_000, size  # 100,000 layers must stay under 5 MB (docs/benchmarks.md)
    page = parse(report.read_text())
    data = page.graph_data
    check_folded(data, profile, analysis)
    names = [data["strings"][n] for n in data["G"]["name"]]
    assert "stage7" in names and "block733" in names
    assert "the 500 slowest of 20000 layers" in report.read_text()


# ------------------------------------------------------------------------------------- in a browser

def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


def rendered_dom(browser: str, page: Path) -> str:
    with tempfile.TemporaryDirectory() as profile_dir:
        result = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile_dir}", "--window-size=1400,2000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120)
    return result.stdout


def test_browser_draws_the_folded_graph_with_labelled_hot_layers(sample, tmp_path):
    browser = chromium()
    profile, analysis = sample
    page = write_html(profile, analysis, tmp_path / "r.html")
    dom = parse(rendered_dom(browser, page))
    texts = [t.strip() for t in dom.texts]
    top = profile.top_nodes(1)[0]
    short = analysis.graph.node(top.node_id).name.rsplit("/", 1)[-1]
    # The hottest layer is drawn with its rank and name, in a box or in its closed group's list.
    assert any(t.startswith(f"#1 {short}") for t in texts), texts[:40]
    # Group boxes carry name, layer count and share of the time.
    assert any(re.match(r"[▸▾] (encoder|decoder)", t) for t in texts)
    assert any(re.search(r"\d+ layers · [\d.]+ % · [\d.]+ ms", t) for t in texts)


# ------------------------------------------------------------------------------------- CLI, Markdown

def test_report_command_puts_targets_side_by_side(sample_model, tmp_path):
    paths = []
    for mode in ("exact", "deployed"):
        settings = ProfileSettings(mode=mode, runs=3, warmup=1, threads=1)
        profile, _ = profile_file(sample_model, settings)
        paths.append(str(profile.save_json(tmp_path / f"{mode}.json")))
    out, md = tmp_path / "r.html", tmp_path / "r.md"
    assert cli_main(["report", *paths, "-o", str(out), "--markdown", str(md)]) == 0
    page = out.read_text()
    assert "Targets side by side (2)" in page and "Top layers on each target" in page
    assert "cpu exact" in page and "cpu deployed" in page
    text = md.read_text()
    assert "| cpu exact" in text and "| cpu deployed" in text and "decoder" in text
    # A report of profiles whose model is gone still names layers and says what it lacks.
    missing = Profile.load_json(paths[0])
    from dataclasses import replace
    alone = tmp_path / "alone.json"
    replace(missing, model_path=str(tmp_path / "gone.onnx")).save_json(alone)
    assert cli_main(["report", str(alone), "-o", str(tmp_path / "alone.html")]) == 0
    assert "not at hand" in (tmp_path / "alone.html").read_text()
    assert cli_main(["report", str(alone)]) == 2  # nothing to write: one clear line
    assert cli_main(["report", paths[0], "-o", str(tmp_path / "no" / "such" / "r.html")]) == 2  # no traceback


def chain_with_one_kernel(path: Path, slow_kernel: int) -> Path:
    """Conv chain at 32 channels; the conv `mid/conv` has a `slow_kernel` x `slow_kernel` kernel (same shape out)."""
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for i in range(6):
        k = slow_kernel if i == 3 else 3
        name = "mid/conv" if i == 3 else f"conv{i}"
        inits.append(numpy_helper.from_array((rng.standard_normal((32, 32, k, k)) * 0.05).astype(np.float32),
                                             f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"y{i}"], name=name, pads=[k // 2] * 4))
        x = f"y{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 48, 48])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


def test_compare_markdown_names_the_layer_made_slower_first(tmp_path):
    settings = ProfileSettings(mode="exact", runs=9, warmup=2, threads=1)
    before, _ = profile_file(chain_with_one_kernel(tmp_path / "before.onnx", 3), settings)
    after, _ = profile_file(chain_with_one_kernel(tmp_path / "after.onnx", 9), settings)  # ~9x the MACs
    a, b = before.save_json(tmp_path / "a.json"), after.save_json(tmp_path / "b.json")
    md = tmp_path / "diff.md"
    assert cli_main(["compare", str(a), str(b), "--markdown", str(md)]) == 0
    text = md.read_text()
    slower = text.split("layer(s) slower beyond the noise")[1]
    first_row = next(line for line in slower.splitlines() if line.startswith("| ") and "---" not in line
                     and not line.startswith("| layer"))
    assert first_row.startswith("| mid/conv · Conv |"), text
    assert re.search(r"\| \d+\.\d\dx \(spread \d+\.\d\d–\d+\.\d\d\) \|$", first_row)
