"""Faults through the real workflow (Snakemake on the demo, in a scratch copy): refused at DAG-build time
with one line, or caught by the next stage's check of its inputs, with the last good bundle kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from workflow_helpers import copy_workflow, snakemake


def _edit_config(work: Path, edit) -> None:
    path = work / "config" / "config.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def _second_demo(config: dict, **changes) -> None:
    config["models"].append({**config["models"][0], "id": "demo2", **changes})


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c["models"][0].__setitem__("name", "a..b"), "models[demo]: name 'a..b' cannot be a Hugging Face repo name"),
        (lambda c: _second_demo(c), "models demo and demo2 both make bundle 'hf2mlc-demo-gpt-neox-"),
        (lambda c: c["defaults"]["targets"]["mac"].__setitem__("prefill_chunk_size", 4096),
         "models[demo].targets.mac: prefill_chunk_size 4096 is larger than context_window_size 2048"),
    ],
    ids=["invalid-hub-name", "same-name-twice", "chunk-larger-than-window"],
)
def test_settings_that_would_fail_after_minutes_fail_at_dag_time_in_one_line(tmp_path: Path, edit, needle: str) -> None:
    work = copy_workflow(tmp_path / "wf")
    _edit_config(work, edit)
    proc = snakemake(work, "--dry-run", "iphone_bundle", check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hf2mlc: config/config.yaml: ") and needle in lines[0], lines
    assert not (work / "results").exists()
