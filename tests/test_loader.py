"""The policy loader: broken files are reported precisely, all at once, and never half-loaded.

`tests/data/policies/broken/` is a corpus of broken policy files.  Each starts with
one `# expect: LINE:COL phrase` comment per error the loader must report: the error
must point at exactly that line and column of that file and contain the phrase, and
there must be no other error.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.policy.loader import load_paths, load_texts
from corral.policy.model import Cmp, Limits

BROKEN = Path(__file__).parent / "data" / "policies" / "broken"
EXPECT = re.compile(r"^# expect: (\d+):(\d+) (.+)$")
#: Files that cannot hold a comment header.
NO_HEADER = {"empty.yaml": [(1, 1, "the file is empty")]}

GOOD = """\
policies:
  - name: retry-failed
    kind: job
    when: {state: failed, retries_left: {gt: 0}}
    actions: [retry]
    reason: "retrying ({retries_left} left)"
"""


def expectations(path: Path) -> list[tuple[int, int, str]]:
    if path.name in NO_HEADER:
        return NO_HEADER[path.name]
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = EXPECT.match(line)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), m.group(3)))
    return out


CORPUS = sorted(BROKEN.glob("*.yaml"))


def test_the_broken_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 20
    assert all(expectations(p) for p in CORPUS), [p.name for p in CORPUS if not expectations(p)]


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_each_broken_file_is_reported_at_the_right_place_with_every_error(path: Path) -> None:
    result = load_paths([path])
    got = [(e.pos.file, e.pos.line, e.pos.column, e.message) for e in result.errors]
    expected = expectations(path)
    assert len(got) == len(expected), "\n".join(f"{f}:{ln}:{c}: {m}" for f, ln, c, m in got)
    for line, column, phrase in expected:
        hits = [g for g in got if (g[1], g[2]) == (line, column) and phrase in g[3]]
        assert hits, f"no error at {line}:{column} containing {phrase!r}; got:\n" + "\n".join(
            f"{ln}:{c}: {m}" for _, ln, c, m in got)
        assert hits[0][0] == str(path)
    assert result.policies == []
    assert result.bad_files == [str(path)]


def test_a_broken_file_contributes_nothing_while_good_files_still_load(tmp_path: Path) -> None:
    (tmp_path / "a-good.yaml").write_text(GOOD, encoding="utf-8")
    broken = BROKEN / "three-mistakes.yaml"
    result = load_paths([tmp_path, broken])
    assert [p.name for p in result.policies] == ["retry-failed"]
    assert result.bad_files == [str(broken)]
    assert len(result.errors) == 3


def test_a_file_with_a_good_and_a_bad_policy_contributes_neither() -> None:
    text = GOOD + "  - name: bad\n    kind: job\n    when: {state: faild}\n    actions: [retry]\n    reason: r\n"
    result = load_texts([("mixed.yaml", text)])
    assert result.policies == []
    assert [str(e.pos) for e in result.errors] == ["mixed.yaml:9:19"]


def test_duplicate_names_across_files_name_the_first_location() -> None:
    other = GOOD.replace("state: failed", "state: failing")
    result = load_texts([("first.yaml", GOOD), ("second.yaml", other)])
    assert [p.source.file for p in result.policies if p.source] == ["first.yaml"]
    assert len(result.errors) == 1
    error = result.errors[0]
    assert str(error.pos) == "second.yaml:2:5"
    assert "duplicate policy name 'retry-failed'" in error.message
    assert "first.yaml:2:5" in error.message
    assert result.bad_files == ["second.yaml"]


def test_a_missing_path_is_an_error_not_a_crash(tmp_path: Path) -> None:
    result = load_paths([tmp_path / "nope.yaml"])
    assert [e.message for e in result.errors] == ["no such file or folder"]


def test_test_files_in_a_policy_folder_are_not_loaded_as_policies(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(GOOD, encoding="utf-8")
    (tmp_path / "p.test.yaml").write_text("not: [a policy", encoding="utf-8")
    result = load_paths([tmp_path])
    assert result.ok and [p.name for p in result.policies] == ["retry-failed"]


def test_a_good_policy_loads_with_its_defaults_and_positions() -> None:
    result = load_texts([("g.yaml", GOOD)])
    assert result.ok
    policy = result.policies[0]
    assert policy.priority == 50 and policy.enabled and policy.mode == "enforce" and policy.limits == Limits()
    assert str(policy.source) == "g.yaml:2:5"
    # a condition points at its field, or at its operator when it has one
    assert [str(c.pos) for c in policy.when.items] == ["g.yaml:4:12", "g.yaml:4:42"]  # type: ignore[union-attr]


def test_a_single_policy_file_without_the_policies_list_loads() -> None:
    text = "name: one\nkind: worker\nwhen: {state: up, recent_failures: {at_least: 10}}\nactions: [block]\nreason: r\n"
    result = load_texts([("one.yaml", text)])
    assert result.ok
    assert result.policies[0].when.items[1] == Cmp("recent_failures", "gte", 10)  # type: ignore[union-attr]


def test_limits_and_schedules_load_as_numbers_and_text() -> None:
    text = GOOD + "    limits: {max_actions: 5, max_percent: 12.5, cooldown: 1h30m}\n    schedule: every 5m\n"
    result = load_texts([("l.yaml", text)])
    assert result.ok, [str(e) for e in result.errors]
    policy = result.policies[0]
    assert policy.limits == Limits(5, 12.5, 5400.0)
    assert policy.schedule == "every 5m"


def test_an_override_for_an_unknown_policy_is_reported_with_a_suggestion() -> None:
    result = load_texts([("g.yaml", GOOD)], overrides={"retry-faild": {"x": 1}})
    assert [e.message for e in result.errors] == ["no loaded policy is named 'retry-faild'; did you mean 'retry-failed'?"]


def test_a_byte_that_is_not_utf8_is_shown_where_it_is_in_a_policy_file_and_a_test_file(tmp_path: Path) -> None:
    from corral.policytest.reader import read_test_file

    text = b"policies:\n  - name: p\n    reason: \"caf\xe9\"\n"
    (tmp_path / "p.yaml").write_bytes(text)
    loaded = load_paths([tmp_path / "p.yaml"])
    assert [str(e) for e in loaded.errors] == [f"{tmp_path / 'p.yaml'}:3:17: byte 0xe9 is not UTF-8: save the file as UTF-8"]
    assert loaded.bad_files == [str(tmp_path / "p.yaml")]
    (tmp_path / "p.test.yaml").write_bytes(text)
    _, errors = read_test_file(tmp_path / "p.test.yaml", "reference")
    assert [str(e) for e in errors] == [f"{tmp_path / 'p.test.yaml'}:3:17: byte 0xe9 is not UTF-8: save the file as UTF-8"]


DEPRECATED_POLICY = """\
policies:
  - name: old-lockout
    kind: instance
    when:
      host_failures_on_job: {gt: 5}
      job.worst_host_failures: {gt: 5}
    actions: [block]
    reason: "failed {host_failures_on_job|attempt}"
"""


def test_a_deprecated_field_still_loads_and_is_warned_of_where_it_is_read() -> None:
    result = load_texts([("old.yaml", DEPRECATED_POLICY)])
    assert result.ok and [p.name for p in result.policies] == ["old-lockout"]
    where = [(w.pos.line, w.pos.column) for w in result.warnings]
    assert where == [(5, 7), (6, 7), (8, 13)]
    assert all(("deprecated" in w.message and "host_failed_frames_on_job" in w.message) or
               "worst_host_failed_frames" in w.message for w in result.warnings)


@pytest.mark.parametrize("template", ["{failing_hosts|}", "{failing_hosts|a|b|c}", "{failing_hosts||hosts}"])
def test_a_reason_s_noun_form_that_cannot_agree_is_refused_at_its_position(template: str) -> None:
    text = f"""\
policies:
  - name: p
    kind: job
    when: {{state: failing}}
    actions: [block]
    reason: "{template}"
"""
    result = load_texts([("p.yaml", text)])
    assert [(e.pos.line, e.message.split(":")[0]) for e in result.errors] == [
        (6, f"'{template}' names a noun to agree with the count")]
