"""Faults through the real workflow (Snakemake on the demo, in a scratch copy): refused at DAG-build time
with one line, or caught by the next stage's check of its inputs, with the last good bundle kept."""

from __future__ import annotations

import json
import shutil
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


# ---------------------------------------------------------------- slow: one demo build shared by the module


@pytest.fixture(scope="module")
def demo(demo_workflow: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy (real copies: the tests flip bytes) of the session's built demo workflow, Snakemake's
    metadata and mtimes included, so it is as up to date as the original."""
    work = tmp_path_factory.mktemp("faults") / "wf"
    shutil.copytree(demo_workflow["work"], work, symlinks=True)
    assert "Nothing to be done" in (proc := snakemake(work, "--dry-run", "iphone_bundle")).stdout + proc.stderr
    return work


def _flip(path: Path, offset: int = 100) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 1]))


def _one_hf2mlc_line(proc, rule: str) -> str:
    """The one message of the failed job(s): each failing job of ``rule`` prints the same single line."""
    lines = {line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("hf2mlc: ")}
    assert len(lines) == 1 and next(iter(lines)).startswith(f"hf2mlc: rule {rule}: "), proc.stderr[-3000:]
    return lines.pop()


@pytest.mark.slow
def test_failed_package_rerun_keeps_the_stored_version_and_restore_brings_it_back(demo: Path) -> None:
    from hf2mlc.cli import main
    from hf2mlc.manifest import read_manifest, verify_manifest

    package = demo / "results" / "package" / "demo" / "iphone"
    version = read_manifest(package)["version_id"]
    stored = demo / "results" / "versions" / "demo" / "iphone" / version
    assert verify_manifest(stored) == []
    lines = [json.loads(line) for line in (demo / "results" / "versions.jsonl").read_text().splitlines()]
    assert [(line["version_id"], line["path"]) for line in lines if line["device"] == "iphone"] == [
        (version, f"versions/demo/iphone/{version}")]

    shipped = demo / "results" / "tokenizer" / "demo" / "tokenizer.model"  # the demo's SentencePiece model
    _flip(shipped)
    proc = snakemake(demo, "--cores", "2", "--forcerun", "package", "results/package/demo/iphone", check=False)
    assert proc.returncode != 0
    message = _one_hf2mlc_line(proc, "package")
    assert str(Path("results/tokenizer/demo/tokenizer.model")) in message and "--forcerun tokenizer" in message
    assert not package.exists()  # Snakemake removed the old output before the job ran …
    assert verify_manifest(stored) == []  # … but the stored version is intact
    _flip(shipped)

    assert main(["restore", version[:8], "--results", str(demo / "results")]) == 0
    assert read_manifest(package)["version_id"] == version and verify_manifest(package) == []


@pytest.mark.slow
def test_flipped_byte_in_results_download_fails_convert_in_one_line_and_leftovers_go(demo: Path) -> None:
    weights = Path("results/weights/demo/q4f16_0")
    safetensors = demo / "results" / "download" / "demo" / "model.safetensors"
    _flip(safetensors, 4096)
    proc = snakemake(demo, "--cores", "2", "--forcerun", "convert", str(weights), check=False)
    assert proc.returncode != 0
    message = _one_hf2mlc_line(proc, "convert")
    assert "results/download/demo/model.safetensors: sha256 " in message and "--forcerun download" in message
    assert not (demo / weights).exists()
    _flip(safetensors, 4096)

    leftover = demo / weights.parent / ".q4f16_0.tmp-killed01"  # what a kill -9 of an earlier run leaves
    leftover.mkdir()
    (leftover / "params_shard_0.bin").write_bytes(b"\0" * 1000)
    snakemake(demo, "--cores", "2", str(weights))
    assert not leftover.exists() and (demo / weights / "tensor-cache.json").is_file()
