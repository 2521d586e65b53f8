"""Snakemake entry point of rule reference_answers (rules/reference.smk)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821  (run this checkout's hf2mlc, in any env)

from hf2mlc import stages  # noqa: E402
from hf2mlc.snakemake_script import run_stage  # noqa: E402

run_stage(
    snakemake,  # noqa: F821
    stages.reference_answers,
    model_dir=snakemake.input.model,  # noqa: F821
    out_dir=snakemake.output[0],  # noqa: F821
    family_files={name: snakemake.input[name] for name in snakemake.params.templates},  # noqa: F821
    prompts=snakemake.params.prompts,  # noqa: F821
    answer_tokens=snakemake.params.answer_tokens,  # noqa: F821
)
