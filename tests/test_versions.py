"""The version store (hf2mlc.versions): every package version kept, listed, restorable, at no extra space."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hf2mlc.cli import main
from hf2mlc.errors import UserError
from hf2mlc.manifest import atomic_output_dir, sha256_file, write_manifest
from hf2mlc.versions import list_versions, restore, store

SETTINGS = {"model_id": "demo-q4f16_0-MLC", "quantization": "q4f16_0", "source": "demo"}


def make_package(results: Path, shard: bytes, device: str = "iphone") -> tuple[Path, dict]:
    """A package the way Snakemake leaves it: made in a temporary directory, renamed into place."""
    package = results / "package" / "demo" / device
    with atomic_output_dir(package) as tmp:
        (tmp / "bundle" / "demo-q4f16_0-MLC").mkdir(parents=True)
        (tmp / "bundle" / "demo-q4f16_0-MLC" / "params_shard_0.bin").write_bytes(shard)
        (tmp / "README.md").write_text("# card\n")
        manifest = write_manifest(tmp, stage="package")
    return package, manifest


def snakemake_deletes_output(package: Path) -> None:
    """What Snakemake does to an output before rerunning its job."""
    for path in sorted(package.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    package.rmdir()


def test_a_failed_rerun_never_loses_a_stored_version_and_restore_puts_it_back(tmp_path):
    results = tmp_path / "results"
    package, first = make_package(results, b"v1" * 5000)
    stored = store(package, versions_log=results / "versions.jsonl", model="demo", device="iphone", settings=SETTINGS)
    assert stored == results / "versions" / "demo" / "iphone" / first["version_id"]
    shard = stored / "bundle" / "demo-q4f16_0-MLC" / "params_shard_0.bin"
    # hard links: the stored version costs no space
    assert shard.stat().st_ino == (package / "bundle" / "demo-q4f16_0-MLC" / "params_shard_0.bin").stat().st_ino

    snakemake_deletes_output(package)  # the rerun starts …
    with pytest.raises(RuntimeError):  # … and fails inside its stage
        with atomic_output_dir(package) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("conversion crashed")
    assert not package.exists()
    assert shard.read_bytes() == b"v1" * 5000

    rows = list_versions(results)
    assert [(r["version_id"], r["stored"], r["path"]) for r in rows] == [
        (first["version_id"], True, f"versions/demo/iphone/{first['version_id']}")
    ]
    entry, target = restore(results, first["version_id"][:6])
    assert target == package and entry["version_id"] == first["version_id"]
    assert sha256_file(package / "bundle" / "demo-q4f16_0-MLC" / "params_shard_0.bin") == first["files"][
        "bundle/demo-q4f16_0-MLC/params_shard_0.bin"]["sha256"]


def test_every_version_is_listed_and_a_repeat_is_stored_once(tmp_path, capsys):
    results = tmp_path / "results"
    ids = []
    for shard in (b"a" * 100, b"b" * 100, b"a" * 100):
        package, manifest = make_package(results, shard)
        store(package, versions_log=results / "versions.jsonl", model="demo", device="iphone", settings=SETTINGS)
        ids.append(manifest["version_id"])
    assert ids[0] == ids[2] != ids[1]
    lines = [json.loads(line) for line in (results / "versions.jsonl").read_text().splitlines()]
    assert [line["version_id"] for line in lines] == ids
    assert sorted(p.name for p in (results / "versions" / "demo" / "iphone").iterdir()) == sorted({ids[0], ids[1]})
    assert [r["version_id"] for r in list_versions(results)] == [ids[1], ids[0]]  # latest line last

    assert main(["versions", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert ids[0] in out and ids[1] in out and "demo" in out and "iphone" in out
    assert main(["restore", ids[1], "--results", str(results)]) == 0
    assert (results / "package" / "demo" / "iphone" / "bundle" / "demo-q4f16_0-MLC" / "params_shard_0.bin").read_bytes() == b"b" * 100


def test_restore_refuses_a_damaged_or_unknown_version(tmp_path, capsys):
    results = tmp_path / "results"
    package, manifest = make_package(results, b"good" * 100)
    stored = store(package, versions_log=results / "versions.jsonl", model="demo", device="iphone", settings=SETTINGS)
    assert main(["restore", "ffffffff", "--results", str(results)]) == 2
    assert "no stored version 'ffffffff'" in capsys.readouterr().err
    # the shared inode edited in place (through the package): the store notices, nothing is restored
    with open(package / "README.md", "r+") as handle:
        handle.write("X")
    snakemake_deletes_output(package)
    with pytest.raises(UserError, match="no longer matches its manifest \\(README.md\\)"):
        restore(results, manifest["version_id"])
    assert not package.exists()
