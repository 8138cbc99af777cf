"""The promises README makes about the two commands hold in the tree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Two commands.*?```sh\n(.*?)```", text, re.S)
    assert block, "README.md lost its 'Two commands' code block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_the_two_commands():
    assert _readme_commands() == ["./hmmlab run", "./hmmlab test"]


def test_ci_runs_the_readme_test_command():
    test_cmd = _readme_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(rf"^{re.escape(test_cmd)}\b", ci, re.M), f".ci/run must call {test_cmd!r}"


def test_launchers_are_executable():
    for path in ("hmmlab", ".ci/run"):
        assert (ROOT / path).stat().st_mode & 0o111, f"{path} is not executable"
