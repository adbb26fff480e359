"""One syntax everywhere a wrangler writes durations and frames: weeks in a policy as in
`--since`, frame ranges with steps as every farm manager takes them."""

from __future__ import annotations

import pytest

from corral.feed import parse_frames
from corral.policy.loader import load_texts, parse_duration
from corral.snapshot import SnapshotError, parse_snapshot


def test_a_cooldown_of_two_weeks_is_written_as_since_takes_it() -> None:
    assert parse_duration("2w") == 14 * 86400 and parse_duration("1w2d12h") == 9.5 * 86400
    text = ("policies:\n  - name: p\n    kind: job\n    when: {state: failed}\n    actions: [retry]\n"
            "    reason: r\n    limits: {cooldown: 2w}\n")
    result = load_texts([("p.yaml", text)])
    assert result.ok, [str(e) for e in result.errors]
    assert result.policies[0].limits.cooldown == 14 * 86400


@pytest.mark.parametrize(("spec", "frames"), [
    ("1-100x10", [1, 11, 21, 31, 41, 51, 61, 71, 81, 91]),
    ("1-10:3", [1, 4, 7, 10]),
    ("1-5,10-20x5", [1, 2, 3, 4, 5, 10, 15, 20]),
    ("7-7x3", [7]),
])
def test_frame_ranges_take_a_step(spec: str, frames: list[int]) -> None:
    assert parse_frames(spec) == frames
    snap = parse_snapshot({"jobs": [{"id": 1, "name": "a", "frames": [{"range": spec.split(",")[-1], "state": "pending"}]}]},
                          "s.yaml")
    assert sorted(snap.jobs[1].frames) == parse_frames(spec.split(",")[-1])


@pytest.mark.parametrize(("spec", "words"), [("1-100x0", "step is 1 or more"), ("1-10x", "FIRST-LAST[xSTEP]")])
def test_a_bad_step_says_what_to_write(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_frames(spec)
    if spec.endswith("x0"):
        with pytest.raises(SnapshotError, match="step is 1 or more"):
            parse_snapshot({"jobs": [{"id": 1, "name": "a", "frames": [{"range": spec, "state": "pending"}]}]}, "s.yaml")
