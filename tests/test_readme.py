"""The README's quick start is what CI runs, and it names every optional tool the build can use.

A new user runs the README's commands as written; CI (.ci/run) must run the same ones, or a green CI
proves nothing about the README.
"""

from __future__ import annotations

import re
from pathlib import Path

from hf2mlc.compile import OPTIONAL_TOOLS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
CI = (REPO / ".ci" / "run").read_text(encoding="utf-8")


def _quick_start_commands() -> list[str]:
    section = README[README.index("## Quick start") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def _ci_commands() -> list[str]:
    """.ci/run's command lines, without the shell scaffolding (shebang, comments, set/cd, if/fi)."""
    scaffolding = re.compile(r"^(#|set |cd |if |then$|fi$|else$)")
    lines = [line.strip() for line in CI.splitlines()]
    return [line.split(" || ")[0] for line in lines if line and not scaffolding.match(line)]


def test_ci_runs_exactly_the_readme_commands() -> None:
    readme = _quick_start_commands()
    ci = _ci_commands()
    demo = [c for c in readme if "snakemake" in c]
    assert demo == [".venv/bin/snakemake --cores 2 iphone_bundle"]  # the workflow tests run the demo
    assert sorted(ci) == sorted(c for c in readme if c not in demo)
    # Order matters: the optional packages, then the setup, then the tests.
    assert ci[0].startswith("apt-get ") and ci[1].startswith("python3 -m venv .venv") and ci[2:] == [".venv/bin/python -m pytest"]


def test_readme_names_each_optional_package_and_its_output() -> None:
    for tool, (_commands, package, _output) in OPTIONAL_TOOLS.items():
        assert f"`{package}`" in README and f"`{tool}`" in README, tool
    assert "apt-get install -y " + " ".join(p for _c, p, _o in OPTIONAL_TOOLS.values()) in README
