"""``hf2mlc --help`` documents every subcommand and option; ``hf2mlc build`` runs the workflow's stages."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from hf2mlc import cli
from workflow_helpers import copy_workflow


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_help_documents_every_subcommand_and_option(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    subcommands = _subparsers()
    assert set(subcommands) == {"demo", "inspect", "chat", "build", "versions", "restore"}
    for name, sub in subcommands.items():
        assert f"hf2mlc {name}" in text, name  # an example in the overview
        for action in sub._actions:
            assert action.help, f"hf2mlc {name}: {action.dest} has no help"
    rules = "".join(p.read_text(encoding="utf-8") for p in [cli.CHECKOUT / "Snakefile", *(cli.CHECKOUT / "rules").glob("*.smk")])
    for target in cli.BUILD_TARGETS:  # build's targets are the workflow's rules
        assert f"\nrule {target}:" in rules, target


def test_build_runs_the_workflow_for_a_config(tmp_path: Path) -> None:
    work = copy_workflow(tmp_path / "wf")
    proc = subprocess.run(
        [sys.executable, "-m", "hf2mlc.cli", "build", str(work / ".test" / "config" / "demo.yaml"),
         "iphone_bundle", "--dry-run", "--workflow", str(work)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "This was a dry-run" in text
    for rule in ("download", "convert", "compile", "check", "package"):
        assert f"rule {rule}:" in text or f"localrule {rule}:" in text, rule
    assert not (work / "results").exists()


def test_build_names_a_missing_config(tmp_path: Path, capsys) -> None:
    assert cli.main(["build", str(tmp_path / "nope.yaml"), "--workflow", str(cli.CHECKOUT)]) == 2
    assert "hf2mlc: " in capsys.readouterr().err
