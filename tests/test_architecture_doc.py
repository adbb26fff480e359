"""docs/architecture.md is the map of the code: every test it cites as a guard exists,
and every module it lists is there, so the map cannot silently go stale."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()


def test_every_test_the_map_cites_exists() -> None:
    cited = re.findall(r"`?(tests/[\w/]+\.py)(?:::(\w+))?", DOC)
    assert len(cited) > 10
    for path, _ in cited:
        assert (ROOT / path).is_file(), path
    # a bare name after a cited file in the same list item is a test of that file too
    for item in re.split(r"\n(?=\d+\. |\| )", DOC):
        files = re.findall(r"tests/[\w/]+\.py", item)
        if not files:
            continue
        defined = {node.name for f in files for node in ast.walk(ast.parse((ROOT / f).read_text()))
                   if isinstance(node, ast.FunctionDef)}
        for name in re.findall(r"`(?:tests/[\w/]+\.py::)?(test_\w+)`", item):
            assert name in defined, f"{name} is cited in docs/architecture.md but is no test of {files}"


def test_every_module_the_map_lists_exists() -> None:
    table = DOC.split("## Modules, one job each")[1].split("## ")[0]
    listed = {n for row in re.findall(r"^\| (.+?) \|", table, flags=re.M) for n in re.findall(r"`([\w/]+)`", row)}
    assert len(listed) > 20
    src = ROOT / "src" / "corral"
    for name in listed:
        path = src / name
        assert path.is_dir() if name.endswith("/") else (src / f"{name}.py").is_file(), name
