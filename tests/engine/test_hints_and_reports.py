"""Bottleneck hints and report exports on real ONNX Runtime profiles of real files."""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import replace
from html.parser import HTMLParser

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.hints import find_hints
from engine.profile import ATTRIBUTED, DERIVED, ESTIMATED, MEASURED, Profile
from engine.report import chrome_trace, csv_text, html_report, model_explorer_node_data, write_html
from engine.report.exports import CSV_COLUMNS
from engine.samples import mobileunet
from engine.targets import ProfileSettings
from benchmarks.bench_report import measured_profile

SETTINGS = ProfileSettings(mode="exact", runs=7, warmup=2, threads=1)


def profile_file(path, settings=SETTINGS):
    return measured_profile(path, settings)


def _save(proto, tmp_path, name):
    path = tmp_path / name
    onnx.save(proto, path)
    return path


def _weight(rng, name, shape):
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)


def _conv_stack(tmp_path, name, channels=64, size=28, layers=4, depthwise_at=(), elementwise=0):
    """Dense 3x3 convs; optionally some depthwise ones and a chain of elementwise ops on a big tensor."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])
    nodes, inits, current = [], [], "x"
    for i in range(layers):
        depthwise = i in depthwise_at
        shape = [channels, 1, 3, 3] if depthwise else [channels, channels, 3, 3]
        inits.append(_weight(rng, f"w{i}", shape))
        nodes.append(helper.make_node("Conv", [current, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1] * 4,
                                      group=channels if depthwise else 1))
        current = f"c{i}"
    for i in range(elementwise):
        inits.append(_weight(rng, f"k{i}", [1, channels, size, size]))
        nodes.append(helper.make_node("Mul" if i % 2 else "Add", [current, f"k{i}"], [f"e{i}"], name=f"elementwise{i}"))
        current = f"e{i}"
    y = helper.make_tensor_value_info(current, TensorProto.FLOAT, None)
    # IR version 10: what the ONNX Runtime here reads (onnx 1.23 writes 14 by default)
    proto = helper.make_model(helper.make_graph(nodes, name, [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return _save(proto, tmp_path, f"{name}.onnx")


@pytest.fixture(scope="module")
def sample_profile(tmp_path_factory):
    path = _save(mobileunet(alpha=0.5, size=128), tmp_path_factory.mktemp("mu"), "mobileunet.onnx")
    return profile_file(path)


def rules(profile):
    return {h["rule"] for h in profile.hints}


# ---------------------------------------------------------------------------- hints

def test_mobileunet_fires_batchnorm_and_convtranspose_hints(sample_profile):
    profile, analysis = sample_profile
    fired = rules(profile)
    assert {"fold_batchnorm", "convtranspose_decoder"} <= fired
    by_rule = {h["rule"]: h for h in profile.hints}
    transposed = by_rule["convtranspose_decoder"]["node_ids"]
    assert transposed and all(analysis.graph.node(i).op_type == "ConvTranspose" for i in transposed)
    assert all(analysis.graph.node(i).op_type == "BatchNormalization" for i in by_rule["fold_batchnorm"]["node_ids"])
    for hint in profile.hints:
        # exact mode: every time is its own kernel's; rules that judge by MACs or FLOPs per byte add estimated
        static = hint["rule"] in ("low_efficiency", "memory_bound")
        assert hint["message"] and hint["kind"] == ("estimated" if static else "measured") and 0 <= hint["share"] <= 1


def test_a_hint_takes_the_weakest_kind_of_the_figures_it_uses(sample_profile):
    profile, analysis = sample_profile
    batchnorms = set({h["rule"]: h for h in profile.hints}["fold_batchnorm"]["node_ids"])
    # the same runs with the BatchNorm times attributed (as a fused kernel's time split by FLOPs)
    nodes = {i: replace(n, kind=ATTRIBUTED, time=replace(n.time, kind=ATTRIBUTED)) if i in batchnorms else n
             for i, n in profile.nodes.items()}
    hints = find_hints(replace(profile, nodes=nodes), analysis)
    assert "fold_batchnorm" in {h["rule"] for h in hints}
    for hint in hints:  # the kernels' total stays measured: only hints over a BatchNorm become attributed
        expected = ESTIMATED if hint["rule"] in ("low_efficiency", "memory_bound") else \
            ATTRIBUTED if batchnorms & set(hint["node_ids"]) else MEASURED
        assert hint["kind"] == expected, hint
    # one estimated kernel in the total: every share (and so every hint) is estimated
    first = profile.groups[0]
    groups = (replace(first, time=replace(first.time, kind=ESTIMATED)),) + profile.groups[1:]
    estimated = find_hints(replace(profile, groups=groups), analysis)
    assert estimated and {h["kind"] for h in estimated} == {ESTIMATED}


def test_folded_sample_has_no_batchnorm_hint(tmp_path):
    path = _save(mobileunet(alpha=0.5, size=128, fold_batchnorm=True), tmp_path, "folded.onnx")
    profile, _ = profile_file(path)
    assert "fold_batchnorm" not in rules(profile)


def profile_until(path, wanted, attempts=3):
    """Profiles `path` until `wanted(profile, analysis)` holds, at most `attempts` times: the rules
    read measured times, and on a machine shared with other jobs one layer's median can be hit by
    a burst of preemption (seen under CI load: one 3x3 conv at 4 ms beside 0.2 ms ones)."""
    for _ in range(attempts):
        profile, analysis = profile_file(path)
        if wanted(profile, analysis):
            break
    return profile, analysis


def test_plain_dense_convs_stay_silent(tmp_path):
    profile, _ = profile_until(_conv_stack(tmp_path, "dense"), lambda p, a: p.hints == ())
    assert profile.hints == ()


def test_depthwise_on_cpu_fires(tmp_path):
    path = _conv_stack(tmp_path, "depthwise", channels=64, size=112, layers=6, depthwise_at=(0, 1, 2, 3, 4))
    profile, _ = profile_file(path)
    assert "depthwise_cpu" in rules(profile)


def test_low_efficiency_names_the_odd_layer(tmp_path):
    path = _conv_stack(tmp_path, "odd", channels=64, size=56, layers=5, depthwise_at=(2,))

    def found(profile, _):
        hint = next((h for h in profile.hints if h["rule"] == "low_efficiency"), None)
        return hint is not None and "conv2" in hint["node_ids"]
    profile, _ = profile_until(path, found)
    hint = next((h for h in profile.hints if h["rule"] == "low_efficiency"), None)
    assert hint is not None and "conv2" in hint["node_ids"]
    assert hint["kind"] == ESTIMATED  # measured times over MACs counted from shapes


def test_memory_bound_fires_on_elementwise_chain(tmp_path):
    path = _conv_stack(tmp_path, "elementwise", channels=32, size=56, layers=1, elementwise=8)
    profile, analysis = profile_until(path, lambda p, a: any(h["rule"] == "memory_bound" for h in p.hints))
    hint = next((h for h in profile.hints if h["rule"] == "memory_bound"), None)
    assert hint is not None
    assert all(analysis.graph.node(i).op_type in ("Add", "Mul") for i in hint["node_ids"])
    assert hint["kind"] == ESTIMATED  # FLOPs per byte come from shapes


# ---------------------------------------------------------------------------- exports

class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.external = []
        self.tags = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith("#"):
                self.external.append((tag, name, value))
        if tag in ("link", "iframe", "img"):
            self.external.append((tag, "", ""))
        # The graph's small script is inline (issue 15): a script may not load anything.


def test_html_report_is_self_contained(sample_profile, tmp_path):
    profile, analysis = sample_profile
    sweep = [{"series": "cpu", "setting": "96", "median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.1, "macs": 1e6},
             {"series": "cpu", "setting": "128", "median_ms": 1.8, "p10_ms": 1.7, "p90_ms": 1.9, "macs": 2e6}]
    path = write_html(profile, analysis, tmp_path / "report.html", sweep=sweep)
    text = path.read_text()
    parser = _Collector()
    parser.feed(text)
    assert parser.external == []
    assert "url(" not in text
    assert {"svg", "table", "rect", "polyline"} <= parser.tags
    for section in ("Hints", "by stage", "Top", "By op type", "sweep", "Graph, folded, coloured by time", "Every layer"):
        assert section in text
    for kind in ("measured", "estimated"):
        assert f'class="kind {kind}"' in text
    assert "decoder" in text and "ConvTranspose" in text


def _card_kinds(text):
    """Report card label -> the kind badge shown with its value."""
    return {label: kind for kind, label in
            re.findall(r'<span class="kind [^"]+"[^>]*>([^<]+)</span></div><div class="l">([^<]+)</div>', text)}


def test_report_cards_and_hints_carry_the_kinds_of_their_figures(sample_profile):
    profile, analysis = sample_profile
    cards = _card_kinds(html_report(profile, analysis))
    assert cards["coverage: per-layer sum / end-to-end"] == cards["profiler overhead"] == MEASURED
    assert cards["multiply-accumulates"] == ESTIMATED
    # the same runs where the end-to-end time is derived and one kernel's time attributed: every card
    # dividing them says so, and a hint that states no kind is shown as unknown, never as measured
    first = profile.groups[0]
    relabelled = replace(profile, end_to_end=replace(profile.end_to_end, kind=DERIVED),
                         groups=(replace(first, time=replace(first.time, kind=ATTRIBUTED)),) + profile.groups[1:],
                         hints=[{k: v for k, v in hint.items() if k != "kind"} for hint in profile.hints])
    text = html_report(relabelled, analysis)
    cards = _card_kinds(text)
    assert next(kind for label, kind in cards.items() if label.startswith("end-to-end median")) == DERIVED
    assert cards["profiler overhead"] == DERIVED
    assert cards["coverage: per-layer sum / end-to-end"] == ATTRIBUTED  # derived and attributed: the later
    assert text.count('<span class="kind notrun" title="how this figure was obtained">unknown</span>') == \
        len(profile.hints)


def test_csv_has_one_row_per_timed_node(sample_profile):
    profile, analysis = sample_profile
    rows = list(csv.DictReader(io.StringIO(csv_text(profile, analysis))))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    timed = [r for r in rows if r["time_kind"] in ("measured", "attributed")]
    assert {r["id"] for r in timed} == set(profile.nodes)
    assert all(float(r["median_ms"]) >= 0 for r in timed)


def test_chrome_trace_is_well_formed(sample_profile):
    profile, _ = sample_profile
    trace = json.loads(json.dumps(chrome_trace(profile)))
    events = trace["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert len([e for e in spans if e["pid"] == 1]) == len(profile.groups)
    for event in spans:
        assert {"name", "ts", "dur", "pid", "tid"} <= set(event) and event["dur"] >= 0 and event["ts"] >= 0
    median_track = [e for e in spans if e["pid"] == 1]
    for before, after in zip(median_track, median_track[1:]):  # sequential, no overlap
        assert after["ts"] >= before["ts"] + before["dur"] - 1e-3


def test_model_explorer_node_data(sample_profile):
    profile, analysis = sample_profile
    data = model_explorer_node_data(profile, analysis)
    (graph_data,) = data.values()
    assert len(graph_data["results"]) == len(profile.nodes)
    assert all(isinstance(r["value"], float) for r in graph_data["results"].values())
    outputs = {out for n in analysis.graph.nodes for out in n.outputs}
    assert set(graph_data["results"]) <= outputs
    assert graph_data["gradient"][0]["stop"] == 0 and graph_data["gradient"][-1]["stop"] == 1


def test_profile_json_round_trip_keeps_hints(sample_profile, tmp_path):
    profile, _ = sample_profile
    path = profile.save_json(tmp_path / "p.json")
    again = Profile.load_json(path)
    assert again.hints == profile.hints
    doc = json.loads(path.read_text())
    assert doc["schema"] == "layerscope.profile/1"
    assert re.match(r"\d{4}-\d\d-\d\d", doc["created_at"])


def test_incomplete_profile_is_said_in_the_report(sample_profile):
    from dataclasses import replace

    profile, analysis = sample_profile
    partial = replace(profile, complete=False, error="device disconnected after 3 runs")
    assert "device disconnected after 3 runs" in html_report(partial, analysis)
