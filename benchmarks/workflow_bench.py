"""Workflow reruns on the demo model: how long Snakemake takes when nothing, or only the iPhone, changed.

The workflow runs in a scratch copy (benchmarks/work/workflow) that is kept between benchmark runs:
files are synced from the repository only where their content differs (with their modification
times), so a second benchmark run starts from a completed run and measures the no-op rerun a user
sees, not a rebuild.  Jobs are read from Snakemake's own log, so the report names what reran.
"""

from __future__ import annotations

import filecmp
import json
import math
import os
import re
import resource
import shutil
import statistics
import struct
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


# ----------------------------------------------------------------------------- the LINE-scale run (issue 11)

#: The LINE stand-in's tokenizer: llm-jp's SentencePiece v2.2 (unigram, byte fallback, 48,586 pieces;
#: ids 0-2 <unk> <s> </s> as LINE's), the closest public relative of LINE's spiece.model, from
#: ../shared/data beside the checkout (HF2MLC_SHARED_DATA points elsewhere); never copied into the project.
STAND_IN_TOKENIZER = ("tokenizers", "code10K_en20K_ja30K.ver2.2.model")
STAND_IN_ID = "line-3.6b-synthetic"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def pad_sentencepiece(data: bytes, vocab_size: int) -> bytes:
    """``data`` (a serialized SentencePiece ModelProto) with placeholder pieces appended up to
    ``vocab_size``: the random stand-in emits any id below its vocab (51,200 as LINE's), and every id must
    decode.  Appending works because protobuf concatenates a repeated field (``pieces``, field 1) in order;
    each piece is USER_DEFINED (type 4) with a surface no text contains, so encoding is unchanged."""
    from hf2mlc.tokenizer.proto import parse_sentencepiece

    have = len(parse_sentencepiece(data).pieces)
    if have > vocab_size:
        raise RuntimeError(f"the tokenizer has {have} pieces, more than the model's vocab of {vocab_size}")
    extra = bytearray()
    for i in range(have, vocab_size):
        surface = f"<stand-in-{i}>".encode()
        piece = b"\x0a" + _varint(len(surface)) + surface + b"\x15" + struct.pack("<f", 0.0) + b"\x18\x04"
        extra += b"\x0a" + _varint(len(piece)) + piece
    return data + bytes(extra)


def stand_in_source(checkpoint: Path, tokenizer: Path, dest: Path) -> Path:
    """A local model source as LINE's Hub repo lays it out: the synthetic checkpoint's files (hard links:
    the download stage copies them into results/ as it would a user's directory), ``spiece.model`` (the
    given SentencePiece model padded to the checkpoint's vocab) and LINE's tokenizer_config /
    special_tokens_map (hf2mlc.demo writes them as LINE's)."""
    from hf2mlc import demo

    if not tokenizer.is_file():
        raise RuntimeError(f"no {tokenizer}: the stand-in's tokenizer comes from shared/data (set HF2MLC_SHARED_DATA)")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for path in sorted(checkpoint.iterdir()):
        if path.is_file():
            os.link(path, dest / path.name)
    vocab = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    (dest / "spiece.model").write_bytes(pad_sentencepiece(tokenizer.read_bytes(), vocab))
    (dest / "tokenizer_config.json").write_text(json.dumps(demo.tokenizer_config(), indent=1), encoding="utf-8")
    (dest / "special_tokens_map.json").write_text(json.dumps(demo.special_tokens_map(), indent=1), encoding="utf-8")
    return dest


def stand_in_config(repo: Path, source: Path, *, max_tokens: int) -> dict[str, Any]:
    """The repository's config with the stand-in as its only model, LINE's family and an evaluation of
    ``max_tokens`` tokens of the default text (the default 10,000 does not fit a benchmark run)."""
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text(encoding="utf-8"))
    config["models"] = [{"id": STAND_IN_ID, "source": str(source), "name": "line-3.6b-synthetic", "family": "line",
                         "evaluation": {"max_tokens": max_tokens}}]
    return config


def benchmark_tables(results: Path) -> list[dict[str, Any]]:
    """Every job's row of its rule's ``benchmark:`` TSV (results/benchmarks/<rule>/<wildcards>.tsv), as the
    workflow's own summary reads them (hf2mlc.summary): wall seconds, Snakemake's max_rss (MB) and CPU
    seconds, in the order the jobs finished."""
    from hf2mlc.summary import read_benchmarks

    root = results / "benchmarks"
    frame = read_benchmarks(root).dropna(subset=["wall_s"])  # a header-only file: no run recorded

    def number(value: float) -> float | None:
        return None if math.isnan(value) else float(value)

    rows = []
    for row in sorted(frame.itertuples(), key=lambda r: (root / f"{r.job}.tsv").stat().st_mtime):
        rule, _, job = row.job.partition("/")
        rows.append({"rule": rule, "job": job, "seconds": float(row.wall_s), "max_rss_mb": number(row.max_rss_mib),
                     "cpu_seconds": number(row.cpu_s)})
    return rows


def disk_usage(results: Path) -> dict[str, int]:
    """Bytes under results/ and under each of its top-level folders, from one ``du`` (a hard-linked
    file counts once, in the folder du reaches first), so the parts add up to the total."""
    proc = subprocess.run(["du", "-b", "--max-depth=1", str(results)], capture_output=True, text=True, check=True)
    out = {}
    for line in proc.stdout.splitlines():
        size, path = line.split("\t", 1)
        out["total" if Path(path) == results else Path(path).name] = int(size)
    return out


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_SCORED = re.compile(r"host library: 100%\|[^|]*\| (\d+)/\1 \[(?:(\d+):)?(\d+):(\d+)")


def scoring_seconds(log: Path, rule: str) -> float | None:
    """Seconds a job spent on the evaluation tokens themselves, from its log: the reference from its
    first line ("reference: N tokens of …") to its last layer; an evaluation from the elapsed time of its
    finished progress bar over the rows.  The rest of each job (loading, writing, the evaluation's greedy
    answers) does not grow with the tokens scored.  None when the log does not say."""
    if not log.is_file():
        return None
    text = log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    if rule == "reference":
        stamps = [time.mktime(time.strptime(m[1][:19], "%Y-%m-%d %H:%M:%S")) + int(m[1][20:]) / 1000
                  for line in text.splitlines() if (m := _STAMP.match(line)) and "reference:" in line]
        return round(stamps[-1] - stamps[0], 1) if len(stamps) > 1 else None
    bars = _SCORED.findall(text)
    if not bars:
        return None
    _, hours, minutes, seconds = bars[-1]
    return float(int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds))


def _manifest(path: Path) -> dict[str, Any]:
    file = path / "manifest.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def measure_line(repo: Path, work: Path, checkpoint: Path, *, max_tokens: int, cores: int = 2,
                 logs: Path | None = None, timeout: float = 7200) -> dict[str, Any]:
    """``snakemake --cores N all`` from empty results on the stand-in as a local source: per-job wall and
    max RSS, total wall, disk used, and the reference's and evaluations' per-token rates."""
    sync_workflow(repo, work)
    for name in ("results", ".snakemake"):
        shutil.rmtree(work / name, ignore_errors=True)
    from hf2mlc.demo_variants import shared_data_dir  # ../shared/data beside the checkout, or HF2MLC_SHARED_DATA

    source = stand_in_source(checkpoint, shared_data_dir().joinpath(*STAND_IN_TOKENIZER), work / "model")
    (work / "config" / "config.yaml").write_text(
        yaml.safe_dump(stand_in_config(repo, source, max_tokens=max_tokens), allow_unicode=True, sort_keys=False),
        encoding="utf-8")
    os.sync()
    run = snakemake(work, "--cores", str(cores), "all", log=logs / "line-workflow.log" if logs else None, timeout=timeout)
    results = work / "results"
    jobs = benchmark_tables(results)
    _check(run, "all on the LINE stand-in")
    reference = _manifest(results / "reference" / STAND_IN_ID)
    tokens = reference.get("text", {}).get("tokens")
    evaluations = {}
    for job in jobs:
        if job["rule"] == "evaluate":
            report = json.loads((results / "evaluate" / job["job"] / "report.json").read_text(encoding="utf-8"))
            evaluations[job["job"].split("/")[-1]] = {"seconds": job["seconds"], "tokens": report["text"]["tokens"],
                                                      "scoring_seconds": scoring_seconds(results / "logs" / "evaluate" / f"{job['job']}.log", "evaluate"),
                                                      "delta_perplexity_pct": report["delta_perplexity_pct"],
                                                      "top1_agreement": report["top1_agreement"]}
    ref_job = next((j for j in jobs if j["rule"] == "reference"), None)
    return {
        "model": STAND_IN_ID, "cores": cores, "max_tokens": max_tokens, "tokens": tokens,
        "text": reference.get("params", {}).get("text"),
        "seconds": round(run["seconds"], 1), "other_cores": run["other_cores"], "jobs": jobs,
        "reference": {"seconds": ref_job["seconds"] if ref_job else None, "tokens": tokens,
                      "scoring_seconds": scoring_seconds(results / "logs" / "reference" / f"{STAND_IN_ID}.log", "reference")},
        "evaluations": evaluations, "disk_bytes": disk_usage(results),
    }
