"""engine.session: a model and its profiles in one file, written atomically, read back equal (headless)."""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import replace

import pytest

from engine.analysis import analyze
from engine.profile import Profile
from engine.session import (SESSION_SCHEMA, Session, SessionFormatError, SweepResult, input_shapes_of,
                            load_session, profile_analysis, save_session, session_from_json_dict)
from engine.sweep import sweep_sizes
from engine.targets import ProfileSettings, get_target
from importers import open_model


@pytest.fixture(scope="module")
def sample_profiles(sample_model):
    """Two real profiles of the sample (exact and deployed) on the CPU reference, a few runs each."""
    profiles = []
    target = get_target("cpu")
    try:
        for mode in ("exact", "deployed"):
            settings = ProfileSettings(mode=mode, runs=2, warmup=1, threads=1)
            target.prepare(sample_model, settings)
            profiles.append(target.profile(settings))
    finally:
        target.close()
    return profiles


def test_round_trip_keeps_profiles_sweeps_selection(tmp_path, sample_model, sample_profiles):
    sweep = SweepResult("cpu", ({"setting": "128x128", "size": [128, 128], "median_ms": 1.5, "complete": True},
                                {"setting": "160x160", "size": (160, 160), "median_ms": 2.5, "complete": True}),
                        {"mode": "exact", "runs": 2})
    session = Session(str(sample_model), tuple(sample_profiles), (sweep,), selected=1, overlay="time")
    path = save_session(session, tmp_path / "work.layerscope")
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["schema"] == SESSION_SCHEMA
    assert document["model"]["path"] == str(sample_model.resolve())
    back = load_session(path)
    assert back.model_path == str(sample_model.resolve())
    assert back.selected == 1 and back.overlay == "time"
    assert [p.to_json_dict() for p in back.profiles] == [p.to_json_dict() for p in sample_profiles]
    assert back.sweeps[0].target == "cpu" and back.sweeps[0].rows[1]["size"] == [160, 160]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_round_trip_keeps_the_layout_and_older_sessions_leave_it_unset(tmp_path, sample_model):
    session = Session(str(sample_model), grouping="namespace", collapsed=("group:ns:/decoder", "group:ns:/encoder"),
                      show_constants=True)
    back = load_session(save_session(session, tmp_path / "grouped.layerscope"))
    assert (back.grouping, back.collapsed, back.show_constants) == \
        ("namespace", ("group:ns:/decoder", "group:ns:/encoder"), True)
    document = json.loads((tmp_path / "grouped.layerscope").read_text(encoding="utf-8"))
    del document["view"]  # as written before the layout was kept
    older = session_from_json_dict(document)
    assert (older.grouping, older.collapsed, older.show_constants) == (None, (), False)


def test_with_profile_selects_the_new_one(sample_model, sample_profiles):
    session = Session(str(sample_model)).with_profile(sample_profiles[0]).with_profile(sample_profiles[1],
                                                                                        select=False)
    assert len(session.profiles) == 2 and session.selected == 0
    with pytest.raises(ValueError):
        Session(str(sample_model), (), selected=0)


def test_write_is_atomic_old_file_survives_a_failed_save(tmp_path, sample_model, sample_profiles):
    path = save_session(Session(str(sample_model), (sample_profiles[0],)), tmp_path / "s.layerscope")
    before = path.read_bytes()
    broken = replace(sample_profiles[0], coverage=math.nan)  # JSON cannot hold NaN: the save fails
    with pytest.raises(ValueError):
        save_session(Session(str(sample_model), (broken,)), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["s.layerscope"]


def test_moved_folder_finds_model_by_relative_path(tmp_path, sample_model, sample_profiles):
    folder = tmp_path / "project"
    folder.mkdir()
    model = folder / "model.onnx"
    shutil.copy(sample_model, model)
    save_session(Session(str(model), (sample_profiles[0],)), folder / "s.layerscope")
    moved = tmp_path / "moved"
    folder.rename(moved)
    assert load_session(moved / "s.layerscope").model_path == str((moved / "model.onnx").resolve())


@pytest.mark.parametrize("content, message", [
    ("not json", "not a JSON file"),
    ('{"schema": "layerscope.profile/1"}', "not a LayerScope session"),
    ('[1, 2]', "not a JSON object"),
    ('{"schema": "layerscope.session/1"}', "malformed"),
    ('{"schema": "layerscope.session/1", "model": {"path": "m.onnx"}, "profiles": [{"schema": "x"}]}',
     "profile 1: not a LayerScope profile"),
    ('{"schema": "layerscope.session/1", "model": {"path": "m.onnx"}, "view": {"grouping": "layers"}}',
     "unknown grouping 'layers'"),
])
def test_bad_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.layerscope"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SessionFormatError) as error:
        load_session(path)
    assert message in str(error.value) and str(path) in str(error.value)
    with pytest.raises(SessionFormatError, match="no such file"):
        load_session(tmp_path / "missing.layerscope")


def test_out_of_range_selection_is_clamped(sample_model, sample_profiles):
    data = {"schema": SESSION_SCHEMA, "model": {"path": str(sample_model)},
            "profiles": [sample_profiles[0].to_json_dict()], "selected": 7}
    assert session_from_json_dict(data).selected == 0


def test_profile_analysis_matches_the_profiled_size(sample_model):
    """A profile at another size of the sample is joined with an analysis at that size (same node ids)."""
    opened = analyze(open_model(sample_model))
    kept: list = []
    sweep_sizes(sample_model, ["128x128"], ProfileSettings(runs=1, warmup=0, threads=1), keep_profiles=kept)
    profile, target_analysis = kept[0]
    analysis = profile_analysis(sample_model, profile, opened)
    assert analysis is not opened
    assert input_shapes_of(analysis) == {"image": (1, 3, 128, 128)}
    assert set(profile.nodes) <= set(analysis.nodes) and set(analysis.nodes) == set(opened.nodes)
    assert analysis.totals.macs == target_analysis.totals.macs
    assert analysis.totals.macs == pytest.approx(opened.totals.macs * (128 * 128) / (160 * 160), rel=0.01)
    # At the opened size the opened analysis is reused as is.
    same = Profile.from_json_dict(dict(profile.to_json_dict(), settings={"input_shapes": {"image": [1, 3, 160, 160]}}))
    assert profile_analysis(sample_model, same, opened) is opened
