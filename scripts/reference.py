"""Snakemake entry point of rule reference (rules/reference.smk)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821  (run this checkout's hf2mlc, in any env)

from hf2mlc import stages  # noqa: E402
from hf2mlc.snakemake_script import run_stage  # noqa: E402

run_stage(
    snakemake,  # noqa: F821
    stages.reference,
    model_dir=snakemake.input.model,  # noqa: F821
    out_dir=snakemake.output[0],  # noqa: F821
    family_files={name: snakemake.input[name] for name in snakemake.params.templates},  # noqa: F821
    max_len=snakemake.params.max_len,  # noqa: F821
    **snakemake.params.evaluation,  # noqa: F821
)
