"""Snakemake entry point of rule patch (rules/patch.smk)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821  (run this checkout's hf2mlc, in any env)

from hf2mlc import stages  # noqa: E402
from hf2mlc.snakemake_script import run_stage  # noqa: E402

run_stage(
    snakemake,  # noqa: F821
    stages.patch,
    model_dir=snakemake.input.model,  # noqa: F821
    family_file=snakemake.input.family,  # noqa: F821
    out_dir=snakemake.output[0],  # noqa: F821
)
