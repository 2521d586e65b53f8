"""Workflow reruns on the demo model: how long Snakemake takes when nothing, or only the iPhone, changed.

The workflow runs in a scratch copy (benchmarks/work/workflow) that is kept between benchmark runs:
files are synced from the repository only where their content differs (with their modification
times), so a second benchmark run starts from a completed run and measures the no-op rerun a user
sees, not a rebuild.  Jobs are read from Snakemake's own log, so the report names what reran.
"""

from __future__ import annotations

import filecmp
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks import machine

WORKFLOW_FILES = ("Snakefile", "config", "rules", "envs", "scripts", "src", "profiles")
_IGNORED = ("__pycache__", "*.egg-info", "*.pyc")
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
_RULE = re.compile(r"^(?:local)?rule (?P<rule>[A-Za-z_][A-Za-z0-9_]*):$")
_WILDCARDS = re.compile(r"^wildcards: (?P<wildcards>.*)$")
_NAMED_TARGETS = {"all", "iphone_bundle", "mac_bundle", "evaluate_all"}


def sync_workflow(repo: Path, dest: Path) -> int:
    """Make ``dest`` hold the repository's workflow files; return how many files were (re)copied."""
    copied = 0
    for name in WORKFLOW_FILES:
        src = repo / name
        if src.is_file():
            if not (dest / name).is_file() or not filecmp.cmp(src, dest / name, shallow=False):
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
                copied += 1
            continue
        wanted = set()
        for path in src.rglob("*"):
            rel = path.relative_to(src)
            if any(part == "__pycache__" or part.endswith(".egg-info") for part in rel.parts) or path.suffix == ".pyc":
                continue
            wanted.add(rel)
            target = dest / name / rel
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif not target.is_file() or not filecmp.cmp(path, target, shallow=False):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                copied += 1
        for path in sorted((dest / name).rglob("*"), reverse=True) if (dest / name).is_dir() else []:
            rel = path.relative_to(dest / name)
            if rel not in wanted and not any(part == "__pycache__" or part.endswith(".egg-info") for part in rel.parts):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
    return copied


def snakemake(workdir: Path, *args: str, log: Path | None = None, timeout: float = 3600) -> dict[str, Any]:
    """Run snakemake; return wall seconds, return code, the jobs it ran (or planned) and its log tail.
    The whole output goes to ``log`` when given."""
    busy_before, children_before = machine.busy_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    busy_after, children_after = machine.busy_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (children_after.ru_utime + children_after.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    other = None if busy_before is None or busy_after is None else max(0.0, busy_after - busy_before - own) / seconds
    text = proc.stdout + proc.stderr
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ snakemake {' '.join(args)}  (in {workdir})\n{text}")
    return {"seconds": seconds, "returncode": proc.returncode, "jobs": jobs_in_log(text), "other_cores": other,
            "nothing_to_do": "Nothing to be done" in text, "tail": text[-3000:]}


def jobs_in_log(text: str) -> list[str]:
    """The jobs in a Snakemake log, as "rule[key=value,…]", sorted; named targets left out."""
    jobs: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if match := _RULE.match(line):
            jobs.append([match["rule"], ""])
        elif (match := _WILDCARDS.match(line)) and jobs:
            jobs[-1][1] = ",".join(part.strip() for part in match["wildcards"].split(","))
    return sorted(f"{rule}[{wc}]" if wc else rule for rule, wc in jobs if rule not in _NAMED_TARGETS)


def _check(result: dict[str, Any], what: str) -> dict[str, Any]:
    if result["returncode"] != 0:
        raise RuntimeError(f"snakemake {what} failed ({result['returncode']}); the jobs' own logs are in "
                           f"results/logs/ of the scratch copy:\n{result['tail']}")
    return result


def _set_iphone_context(config_path: Path, value: int) -> None:
    data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    data["defaults"]["targets"]["iphone"]["context_window_size"] = value
    config_path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def measure(
    repo: Path, work: Path, *, logs: Path | None = None, repeats: int = 3, cores: int = 2, target: str = "all"
) -> dict[str, Any]:
    """Bring the scratch workflow up to date, then time no-op reruns and an iPhone-context-only change.
    Snakemake's output of each step goes to ``logs/workflow-<step>.log``."""
    copied = sync_workflow(repo, work)
    run = ("--cores", str(cores), target)
    log = (lambda name: logs / f"workflow-{name}.log") if logs is not None else (lambda name: None)  # noqa: E731
    bring_up = _check(snakemake(work, *run, log=log("bring-up")), "bring-up run")
    dry = [_check(snakemake(work, "--dry-run", target, log=log(f"dry-run-{i}")), "dry run") for i in range(repeats)]
    noop = [_check(snakemake(work, *run, log=log(f"no-op-{i}")), "no-op run") for i in range(repeats)]
    config_path = work / "config" / "config.yaml"
    original = config_path.read_text(encoding="utf-8")
    old_context = yaml.safe_load(original)["defaults"]["targets"]["iphone"]["context_window_size"]
    new_context = 512 if old_context != 512 else 640
    try:
        _set_iphone_context(config_path, new_context)
        changed = _check(snakemake(work, *run, log=log("iphone-context")), "rerun after the context change")
    finally:
        config_path.write_text(original, encoding="utf-8")
    restored = _check(snakemake(work, *run, log=log("restore")), "rerun after restoring the context")
    final = _check(snakemake(work, "--dry-run", target, log=log("final-dry-run")), "final dry run")

    def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
        others = [r["other_cores"] for r in results if r["other_cores"] is not None]
        return {"seconds": [round(r["seconds"], 2) for r in results],
                "median_seconds": round(statistics.median(r["seconds"] for r in results), 2),
                "other_cores": round(statistics.median(others), 2) if others else None,
                "jobs": sorted({job for r in results for job in r["jobs"]}),
                "nothing_to_do": all(r["nothing_to_do"] for r in results)}

    return {
        "files_synced": copied,
        "bring_up": {"seconds": round(bring_up["seconds"], 1), "jobs": bring_up["jobs"]},
        "dry_run_noop": summary(dry),
        "real_noop": summary(noop),
        "iphone_context_change": {"from": old_context, "to": new_context, "seconds": round(changed["seconds"], 1),
                                  "jobs": changed["jobs"], "other_cores": changed["other_cores"]},
        "restore": {"seconds": round(restored["seconds"], 1), "jobs": restored["jobs"], "other_cores": restored["other_cores"]},
        "up_to_date_at_end": final["nothing_to_do"],
    }
