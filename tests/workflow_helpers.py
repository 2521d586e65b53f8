"""Run the real workflow (Snakemake, the demo model) in a scratch copy of the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "config", "rules", "envs", "scripts", "src", "profiles", "report", ".test")
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def copy_workflow(dest: Path) -> Path:
    """A fresh copy of the workflow (no results/), so tests can edit config and code freely."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: float = 1200, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run snakemake in ``workdir`` (``env`` added to this process's environment); on failure, show its
    output and the failed jobs' logs."""
    proc = subprocess.run(
        [SNAKEMAKE, *args],
        cwd=workdir,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise snakemake_failed(workdir, args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def snakemake_failed(workdir: Path, args: tuple[str, ...], returncode: int, stdout: str, stderr: str) -> AssertionError:
    """The error of a failed snakemake run: its output and the failed jobs' logs."""
    logs = "\n".join(
        f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted((workdir / "results" / "logs").rglob("*.log"))
    ) if (workdir / "results" / "logs").is_dir() else ""
    return AssertionError(
        f"snakemake {' '.join(args)} failed ({returncode})\nSTDOUT:\n{stdout[-6000:]}\n"
        f"STDERR:\n{stderr[-8000:]}\nLOGS:\n{logs[-12000:]}"
    )


_RULE = re.compile(r"^(?:local)?rule (?P<rule>[A-Za-z_][A-Za-z0-9_]*):$")
_WILDCARDS = re.compile(r"^wildcards: (?P<wildcards>.*)$")


def planned_jobs(workdir: Path, *args: str) -> list[str]:
    """The jobs Snakemake would run, read from its own dry run: "rule" or "rule[key=value,…]", sorted.

    Named targets (all, iphone_bundle, …) are left out: they run nothing.
    """
    proc = snakemake(workdir, "--dry-run", *args)
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return []
    jobs: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if match := _RULE.match(line):
            jobs.append([match["rule"], ""])
        elif (match := _WILDCARDS.match(line)) and jobs:
            jobs[-1][1] = ",".join(part.strip() for part in match["wildcards"].split(","))
    if not jobs:
        raise AssertionError(f"could not read the dry run's jobs:\n{text[-4000:]}")
    named = {"all", "iphone_bundle", "mac_bundle", "evaluate_all"}
    return sorted(f"{rule}[{wc}]" if wc else rule for rule, wc in jobs if rule not in named)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start
