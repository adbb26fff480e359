"""Policy tests: YAML files that prove a policy does what its author means.

A test file (`*.test.yaml`, skipped by the policy loader) names the policies under
test, and holds cases.  Each case gives a farm (inline, in the snapshot format, or
`snapshot: path` relative to the test file), an optional `history:` of earlier
actions (for cooldowns), and one or more points in time, each with the plan it
expects (policy, entity, action) and the entities that must not be touched.  Points
in time are consecutive cycles: what one plans (enforce mode) is applied to the farm
and added to the history before the next, exactly as `corral run` would.

Only the policies under test are evaluated, so a case says what *they* do, whatever
else is loaded.  The format is in docs/testing-policies.md.  Every mistake in a test
file is reported with file:line:column; a file with any mistake runs no case.


Five parts: `model` (what a file says and what a run found), `reader`, `runner`,
`render` and `init` (`corral test --init`).
"""

from corral.policytest.init import init_test
from corral.policytest.model import PolicyTestError, PolicyTestFile, RunResult, parse_ref, ref_text
from corral.policytest.reader import read_test_file
from corral.policytest.render import render, result_json
from corral.policytest.runner import find_test_files, run_case, run_step, run_tests

__all__ = [
    "PolicyTestError",
    "PolicyTestFile",
    "RunResult",
    "find_test_files",
    "init_test",
    "parse_ref",
    "read_test_file",
    "ref_text",
    "render",
    "result_json",
    "run_case",
    "run_step",
    "run_tests",
]
