"""Snakemake entry point of rule tables (rules/report.smk)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821  (run this checkout's hf2mlc, in any env)

from hf2mlc.snakemake_script import run_stage  # noqa: E402
from hf2mlc.summary import write_tables  # noqa: E402

run_stage(
    snakemake,  # noqa: F821
    write_tables,
    benchmarks_dir=snakemake.params.benchmarks,  # noqa: F821
    reports=snakemake.params.reports,  # noqa: F821
    bundles=snakemake.params.bundles,  # noqa: F821
    summary_tsv=snakemake.output.summary,  # noqa: F821
    quality_tsv=snakemake.output.quality,  # noqa: F821
    exclude=[snakemake.params.own_benchmark],  # noqa: F821
)
