"""Snakemake entry point of rule evaluate (rules/evaluate.smk)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821  (run this checkout's hf2mlc, in any env)

from hf2mlc import stages  # noqa: E402
from hf2mlc.snakemake_script import run_stage  # noqa: E402

run_stage(
    snakemake,  # noqa: F821
    stages.evaluate,
    model_dir=snakemake.input.model,  # noqa: F821
    weights_dir=snakemake.input.weights,  # noqa: F821
    build_dir=snakemake.input.build,  # noqa: F821
    reference_dir=snakemake.input.reference,  # noqa: F821
    out_dir=snakemake.output[0],  # noqa: F821
    quantization=snakemake.params.quantization,  # noqa: F821
)
