"""Machine faults end in one ``hf2mlc:`` line with a non-zero exit and leave nothing that looks complete.

The faults are real: a 64 KiB tmpfs that fills up, a read-only remount, an immutable directory
(``chattr +i``); they need root (as in the project's CI container) and are skipped where it cannot make them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from hf2mlc.errors import UserError
from hf2mlc.manifest import atomic_output_dir, write_manifest
from hf2mlc.snakemake_script import run_stage
from hf2mlc.tensor_cache import TensorCacheWriter


class PickledPayload:
    """A class torch.load(weights_only=True) refuses to build."""


def fake_job(tmp_path: Path, output: Path, rule: str = "convert") -> types.SimpleNamespace:
    """What Snakemake hands a script: the adapter's whole interface (rule, log, output, threads)."""
    (tmp_path / "logs").mkdir(exist_ok=True)
    return types.SimpleNamespace(rule=rule, log=[str(tmp_path / "logs" / f"{rule}.log")], output=[str(output)], threads=1)


def convert_into(out_dir: str) -> None:
    """The convert stage's writing path: the real tensor-cache writer inside an all-or-nothing directory."""
    with atomic_output_dir(out_dir) as tmp:
        writer = TensorCacheWriter(tmp, shard_cap_mb=1)
        for i in range(8):
            writer.add(f"layer{i}.weight", np.ones((64, 256), dtype=np.float32))
        writer.finish()
        write_manifest(tmp, stage="convert")


@pytest.fixture
def small_fs(tmp_path):
    mount = tmp_path / "fs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def run_job(job, stage, capfd, **kwargs) -> str:
    with pytest.raises(SystemExit) as info:
        run_stage(job, stage, **kwargs)
    assert info.value.code == 1
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"hf2mlc: rule {job.rule}: "), err
    return lines[0]


def test_disk_full_while_writing_weights_is_one_line_and_leaves_nothing(tmp_path, small_fs, capfd):
    out = small_fs / "weights" / "demo" / "q4f16_0"
    line = run_job(fake_job(tmp_path, out), convert_into, capfd, out_dir=str(out))
    assert "no space left on the device holding" in line and "df -h" in line
    assert list((small_fs / "weights" / "demo").iterdir()) == []  # no half-written directory


def test_read_only_results_is_one_line(tmp_path, small_fs, capfd):
    (small_fs / "weights").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    out = small_fs / "weights" / "q4f16_0"
    line = run_job(fake_job(tmp_path, out), convert_into, capfd, out_dir=str(out))
    assert "read-only file system" in line and "make results/ writable" in line
    assert not out.exists()


def test_immutable_results_is_one_line(tmp_path, capfd):
    results = tmp_path / "results" / "weights"
    results.mkdir(parents=True)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(results)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        out = results / "q4f16_0"
        line = run_job(fake_job(tmp_path, out), convert_into, capfd, out_dir=str(out))
        assert "Operation not permitted" in line and "chattr -R -i results" in line
        assert not out.exists()
    finally:
        subprocess.run(["chattr", "-i", str(results)], check=True)


def test_immutable_or_read_only_results_is_refused_before_any_job(tmp_path, small_fs):
    from hf2mlc.preflight import check_writable

    check_writable(tmp_path / "not-yet")  # no results/ yet: its parent is writable
    (small_fs / "results" / "download").mkdir(parents=True)
    check_writable(small_fs / "results")
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    with pytest.raises(UserError, match=r"results/download is on a read-only file system|results is on a read-only"):
        check_writable(small_fs / "results")


def test_multi_line_user_error_reaches_the_terminal_as_one_line(tmp_path, capfd):
    def refuses() -> None:
        raise UserError("model.bin: torch refused it (Weights only load failed.\n\nCheck the docs\n of torch.load)")

    line = run_job(fake_job(tmp_path, tmp_path / "out", rule="build"), refuses, capfd)
    assert "Weights only load failed.; Check the docs; of torch.load" in line


def test_torch_pickle_refusal_is_one_line_with_the_fix(tmp_path):
    torch = pytest.importorskip("torch")
    from hf2mlc.loader.huggingface import _torch_load

    path = tmp_path / "pytorch_model.bin"
    # any object outside torch's allow-list: unpickling it means running code named by the file
    torch.save({"w": torch.zeros(2), "obj": PickledPayload()}, path)
    with pytest.raises(UserError) as info:
        _torch_load(path)
    message = str(info.value)
    assert "\n" not in message and "torch refused to unpickle" in message and "safetensors" in message


@pytest.mark.slow
def test_cli_turns_a_full_disk_into_one_line(tmp_path, small_fs):
    big = small_fs / "filler"
    with pytest.raises(OSError):
        big.write_bytes(b"\0" * (128 << 10))
    proc = subprocess.run(
        [sys.executable, "-m", "hf2mlc.cli", "demo", str(small_fs / "download" / "demo")],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]  # the lines before it are the demo's progress
    assert last.startswith("hf2mlc: no space left on the device holding ") and "Traceback" not in proc.stderr
    assert not (small_fs / "download" / "demo").exists()
