"""Snakemake entry point of rule plot (rules/report.smk)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821  (run this checkout's hf2mlc, in any env)

from hf2mlc.plots import draw_from_tables  # noqa: E402
from hf2mlc.snakemake_script import run_stage  # noqa: E402

run_stage(
    snakemake,  # noqa: F821
    draw_from_tables,
    name=snakemake.wildcards.plot,  # noqa: F821
    summary_tsv=snakemake.input.summary,  # noqa: F821
    quality_tsv=snakemake.input.quality,  # noqa: F821
    out=snakemake.output[0],  # noqa: F821
)
