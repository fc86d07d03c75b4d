"""engine.profile.kind_problems on a real profile document: the same problems, at the same paths,
whether the document is parsed JSON (dicts and lists, the fast path) or made of other mappings.

The profile is real: the bundled sample run on this CPU with ONNX Runtime.
"""
from __future__ import annotations

import copy
import json
from types import MappingProxyType

import pytest

from engine.profile import Profile, ProfileFormatError, kind_problems
from engine.samples import default_sample_path
from engine.targets import ProfileSettings
from engine.targets.cpu import CpuTarget


@pytest.fixture(scope="module")
def document() -> dict:
    with CpuTarget() as target:
        profile = target.profile(ProfileSettings(runs=2, warmup=1, threads=1), model_path=default_sample_path())
    return json.loads(profile.to_json())


def _frozen(value):
    """The same document with every mapping a read-only proxy (not a dict) and every list a list."""
    if isinstance(value, dict):
        return MappingProxyType({key: _frozen(item) for key, item in value.items()})
    if isinstance(value, list):
        return [_frozen(item) for item in value]
    return value


def _broken(document: dict) -> dict:
    broken = copy.deepcopy(document)
    del broken["nodes"][1]["time"]["kind"]
    broken["nodes"][0]["kind"] = "exact"
    broken["end_to_end"]["kind"] = "guessed"
    return broken


def test_a_real_profile_has_no_kind_problems(document):
    assert document["nodes"] and document["end_to_end"]["median_ms"] > 0
    assert kind_problems(document) == []
    assert kind_problems(_frozen(document)) == []
    assert Profile.from_json_dict(document).nodes  # read whole


def test_problems_are_named_by_path_for_dicts_and_other_mappings_alike(document):
    broken = _broken(document)
    problems = kind_problems(broken)
    assert any(p.startswith("nodes[1].time.kind: missing") for p in problems), problems
    assert any(p.startswith("nodes[0].kind: 'exact' is not one of") for p in problems), problems
    assert any(p.startswith("end_to_end.kind: 'guessed' is not one of") for p in problems), problems
    assert kind_problems(_frozen(broken)) == problems  # mappings that are not dicts are walked too
    with pytest.raises(ProfileFormatError, match="figure without a valid kind"):
        Profile.from_json_dict(broken)
