"""Stage outputs checked before use, and what killed runs leave behind (hf2mlc.manifest).

Digests are computed here with hashlib from the bytes on disk, independently of the manifest code.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hf2mlc.errors import UserError
from hf2mlc.manifest import ALWAYS_HASH_BYTES, atomic_output_dir, remove_stale_temporaries, verify_inputs, write_manifest

SRC = Path(__file__).resolve().parents[1] / "src"


def stage_output(directory: Path, files: dict[str, bytes], stage: str = "download") -> dict:
    directory.mkdir(parents=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return write_manifest(directory, stage=stage)


def test_flipped_byte_in_a_stage_output_fails_with_one_line_naming_file_digests_and_rerun(tmp_path):
    out = tmp_path / "results" / "download" / "demo"
    good = os.urandom(5000)
    stage_output(out, {"model.safetensors": good, "config.json": b"{}"})
    assert verify_inputs(out)["stage"] == "download"
    bad = bytearray(good)
    bad[1234] ^= 0x01
    (out / "model.safetensors").write_bytes(bytes(bad))
    with pytest.raises(UserError) as info:
        verify_inputs(out)
    message = str(info.value)
    assert "\n" not in message
    assert str(out / "model.safetensors") in message
    assert hashlib.sha256(good).hexdigest() in message and hashlib.sha256(bad).hexdigest() in message
    assert "snakemake --forcerun download" in message


def test_truncated_large_input_fails_on_size_without_reading_it(tmp_path):
    out = tmp_path / "weights"
    stage_output(out, {"params_shard_0.bin": b"\0" * (ALWAYS_HASH_BYTES + 10)}, stage="convert")
    with open(out / "params_shard_0.bin", "r+b") as handle:
        handle.truncate(ALWAYS_HASH_BYTES)
    with pytest.raises(UserError, match=rf"{ALWAYS_HASH_BYTES} bytes, but .* records {ALWAYS_HASH_BYTES + 10} bytes"):
        verify_inputs(out, whole=False)


def test_same_size_edit_of_a_large_file_is_caught_only_when_read_whole(tmp_path):
    out = tmp_path / "weights"
    stage_output(out, {"params_shard_0.bin": b"\0" * (ALWAYS_HASH_BYTES + 10)}, stage="convert")
    with open(out / "params_shard_0.bin", "r+b") as handle:
        handle.seek(7)
        handle.write(b"\1")
    verify_inputs(out, whole=False)  # size only: the stage does not read this file
    with pytest.raises(UserError, match="forcerun convert"):
        verify_inputs(out, whole=True)


def test_missing_file_or_manifest_is_one_line(tmp_path):
    out = tmp_path / "patch"
    stage_output(out, {"conv_template.json": b"{}"}, stage="patch")
    (out / "conv_template.json").unlink()
    with pytest.raises(UserError, match=r"conv_template.json: missing, but .* lists it; rerun with `snakemake --forcerun patch`"):
        verify_inputs(out)
    (out / "manifest.json").unlink()
    with pytest.raises(UserError, match="manifest.json: missing"):
        verify_inputs(out)


def _run_in_atomic_dir(final: Path, then: str) -> subprocess.Popen:
    return _run_in("from hf2mlc.manifest import atomic_output_dir", f"atomic_output_dir({str(final)!r})",
                   'tmp / "params_shard_0.bin"', then)


def _run_in(imports: str, context: str, write: str, then: str) -> subprocess.Popen:
    """A process that enters ``context``, writes ``write`` (a path) inside it, prints the directory, then runs ``then``."""
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        {imports}
        with {context} as tmp:
            ({write}).write_bytes(b"x" * 100000)
            print(tmp, flush=True)
            {then}
    """)
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(SRC)},
                            stdout=subprocess.PIPE, text=True)


@contextlib.contextmanager
def _live_and_killed(start: Callable[[str], subprocess.Popen]) -> Iterator[tuple[Path, Path]]:
    """(the directory of a run still going, the one a run killed with SIGKILL left behind); the live run is
    killed when the block ends."""
    live = start("time.sleep(60)")
    try:
        running = Path(live.stdout.readline().strip())
        killed = start("os.kill(os.getpid(), signal.SIGKILL)")
        left = Path(killed.stdout.readline().strip())
        assert killed.wait() == -9 and left.is_dir() and (left / "params_shard_0.bin").is_file()
        assert running.is_dir() and running != left
        yield running, left
    finally:
        live.kill()
        live.wait()


def test_kill_9_leftover_temporary_dir_is_removed_by_the_next_run_but_a_live_one_is_kept(tmp_path):
    final = tmp_path / "weights" / "q4f16_0"
    with _live_and_killed(lambda then: _run_in_atomic_dir(final, then)) as (running, left):
        removed = remove_stale_temporaries(final)
        assert removed == [left] and not left.exists() and running.is_dir()
        with atomic_output_dir(final) as tmp:
            (tmp / "ok").write_text("done")
        assert (final / "ok").read_text() == "done" and running.is_dir()
    with atomic_output_dir(final):
        pass  # the live run is dead now: its directory and lock go too
    assert sorted(p.name for p in final.parent.iterdir()) == ["q4f16_0"]


def test_kill_9_leftover_hub_staging_folder_is_removed_by_the_next_upload_but_a_live_one_is_kept(tmp_path):
    from hf2mlc.package import hub_folder

    package = tmp_path / "package" / "demo" / "iphone"
    (package / "bundle" / "demo-q4f16_0-MLC").mkdir(parents=True)
    (package / "bundle" / "demo-q4f16_0-MLC" / "params_shard_0.bin").write_bytes(b"w" * 1000)
    (package / "lib").mkdir()
    (package / "lib" / "libmodel_iphone.a").write_bytes(b"a")
    for name in ("README.md", "manifest.json"):
        (package / name).write_text("{}", encoding="utf-8")
    run = ("from pathlib import Path; from hf2mlc.package import hub_folder", f"hub_folder(Path({str(package)!r}))",
           'tmp / "staged.bin"')
    with _live_and_killed(lambda then: _run_in(*run, then)) as (running, left):
        assert left.parent == package.parent and (left / "staged.bin").is_file()
        with hub_folder(package) as folder:  # the next upload of this bundle
            assert not left.exists() and running.is_dir()
            assert (folder / "params_shard_0.bin").read_bytes() == b"w" * 1000
        assert not folder.exists()
    with hub_folder(package):
        pass  # the live run is dead now: its folder and lock go too
    assert sorted(p.name for p in package.parent.iterdir()) == ["iphone"]


def test_leftover_of_an_older_hf2mlc_without_lock_is_removed(tmp_path):
    final = tmp_path / "build" / "host-q4f16_0"
    legacy = final.parent / ".host-q4f16_0.tmp-abcd1234"
    legacy.mkdir(parents=True)
    (legacy / "lib.so").write_bytes(b"x")
    with atomic_output_dir(final):
        pass
    assert not legacy.exists() and final.is_dir()
