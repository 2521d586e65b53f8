"""Snakemake entry point of rule build (rules/build.smk)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821  (run this checkout's hf2mlc, in any env)

from hf2mlc import stages  # noqa: E402
from hf2mlc.snakemake_script import run_stage  # noqa: E402

run_stage(
    snakemake,  # noqa: F821
    stages.build,
    model_dir=snakemake.input.model,  # noqa: F821
    weights_dir=snakemake.input.weights,  # noqa: F821
    out_dir=snakemake.output[0],  # noqa: F821
    target=snakemake.params.target,  # noqa: F821
    quantization=snakemake.params.quantization,  # noqa: F821
    lib_name=snakemake.params.lib_name,  # noqa: F821
    ffn_out_dtype=snakemake.params.ffn_out_dtype,  # noqa: F821
    max_logit_rel_error=snakemake.params.max_logit_rel_error,  # noqa: F821
    evaluation_text=snakemake.params.evaluation_text,  # noqa: F821
    **snakemake.params.settings,  # noqa: F821
)
