"""The run's tables, read with pandas from what Snakemake and the stages already record.

Snakemake writes one ``benchmark:`` TSV per job (wall seconds, peak RSS, CPU time); each ``evaluate`` job
writes ``report.json``. Reading those, rather than re-measuring or hand-building Markdown, keeps one source
for every number: ``results/summary.tsv`` (one row per job, with the quality of the bundle a ``package``
job made) and ``results/quality.tsv`` (one row per evaluated model and quantization), which the report's
plots read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

#: Columns of results/quality.tsv, from an evaluation's report.json.
QUALITY_COLUMNS = (
    "model",
    "quantization",
    "reference_perplexity",
    "perplexity",
    "delta_perplexity",
    "top1_agreement",
    "kl_mean",
    "kl_max",
    "tokens",
)
#: Columns of results/summary.tsv before the quality columns of a bundle's quantization.
JOB_COLUMNS = ("job", "rule", "wall_s", "max_rss_mib", "cpu_s")


def read_benchmarks(root: str | os.PathLike[str], *, exclude: Iterable[str | os.PathLike[str]] = ()) -> pd.DataFrame:
    """One row per job from the benchmark TSVs under ``root`` (``<rule>/<wildcards…>.tsv``).

    A job benchmarked several times (``--benchmark-repeats``) gets its mean wall and CPU time and its
    largest peak RSS. Snakemake writes ``max_rss`` in MB (2**20 bytes) and ``-`` where it could not measure.
    """
    root = Path(root)
    skip = {Path(p).resolve() for p in exclude}
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        if path.resolve() in skip:
            continue
        runs = pd.read_csv(path, sep="\t", na_values=["-", "NA"])
        job = path.relative_to(root).with_suffix("").as_posix()
        rows.append(
            {
                "job": job,
                "rule": job.split("/", 1)[0],
                "wall_s": float(runs["s"].mean()),
                "max_rss_mib": float(runs["max_rss"].max()),
                "cpu_s": float(runs["cpu_time"].mean()),
            }
        )
    return pd.DataFrame(rows, columns=list(JOB_COLUMNS))


def read_evaluations(reports: Mapping[str, str | os.PathLike[str]]) -> pd.DataFrame:
    """One row per evaluation: ``reports`` maps ``"<model>/<quantization>"`` to its report.json."""
    rows = []
    for key, path in sorted(reports.items()):
        model, quantization = key.split("/")
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        rows.append(
            {
                "model": model,
                "quantization": quantization,
                "reference_perplexity": report["reference"]["perplexity"],
                "perplexity": report["build"]["perplexity"],
                "delta_perplexity": report["delta_perplexity"],
                "top1_agreement": report["top1_agreement"],
                "kl_mean": report["kl_mean"],
                "kl_max": report["kl_max"],
                "tokens": report["text"]["tokens"],
            }
        )
    return pd.DataFrame(rows, columns=list(QUALITY_COLUMNS))


def job_summary(jobs: pd.DataFrame, quality: pd.DataFrame, bundles: Mapping[str, Mapping[str, str]]) -> pd.DataFrame:
    """``jobs`` with, on each bundle's ``package`` job, the quality of its model and quantization.

    ``bundles`` maps a package job (``"package/<model>/<device>"``) to its ``model`` and ``quantization``.
    """
    keys = pd.DataFrame(
        [{"job": job, "model": b["model"], "quantization": b["quantization"]} for job, b in sorted(bundles.items())],
        columns=["job", "model", "quantization"],
    )
    with_quality = keys.merge(quality, on=["model", "quantization"], how="left")
    return jobs.merge(with_quality, on="job", how="left").sort_values("job", kind="stable").reset_index(drop=True)


def write_tables(
    *,
    benchmarks_dir: str | os.PathLike[str],
    reports: Mapping[str, str | os.PathLike[str]],
    bundles: Mapping[str, Mapping[str, str]],
    summary_tsv: str | os.PathLike[str],
    quality_tsv: str | os.PathLike[str],
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Write results/summary.tsv and results/quality.tsv (tab-separated, a header row, no index)."""
    quality = read_evaluations(reports)
    summary = job_summary(read_benchmarks(benchmarks_dir, exclude=exclude), quality, bundles)
    for frame, path in ((summary, summary_tsv), (quality, quality_tsv)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, sep="\t", index=False, float_format="%.10g")
