"""What the numbers were measured on: cores, memory, CPU, load, package versions, the code's commit."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psutil

PACKAGES = (
    "hf2mlc", "apache-tvm", "apache-tvm-ffi", "numpy", "torch", "transformers", "safetensors", "tokenizers",
    "sentencepiece", "snakemake", "huggingface_hub",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_features() -> str:
    """The vector features that decide CPU kernel speed (float16 conversion, AVX widths)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return ", ".join(f for f in ("sse4_2", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16")
                                 if f in flags) or "none of note"
    except OSError:
        pass
    return "unknown"


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load() -> dict[str, float]:
    """Load averages (1, 5, 15 min) and available memory now: other work on the machine shows here."""
    one, five, fifteen = os.getloadavg()
    return {"load_1m": round(one, 2), "load_5m": round(five, 2), "load_15m": round(fifteen, 2),
            "mem_available_gib": round(psutil.virtual_memory().available / 2**30, 1)}


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have used since boot (all cores; idle and iowait excluded, steal included).

    The difference over a measurement, minus the measured process's own CPU time, is what the rest
    of the machine used meanwhile: the best single figure of how much other work disturbed it.
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # user nice system [idle iowait] irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(repo: Path) -> str:
    """HEAD's short hash, with "+changes" when the working tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def describe(repo: Path, work_dir: Path) -> dict[str, Any]:
    disk = shutil.disk_usage(work_dir)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu_model(),
        "cpu_features": cpu_features(),
        "cores": usable_cores(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "disk_free_gib": round(disk.free / 2**30, 1),
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "commit": git_commit(repo),
        "versions": versions(),
        "load_at_start": load(),
    }
