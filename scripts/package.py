"""Snakemake entry point of rule package (rules/package.smk)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821  (run this checkout's hf2mlc, in any env)

from hf2mlc import stages  # noqa: E402
from hf2mlc.snakemake_script import run_stage  # noqa: E402

run_stage(
    snakemake,  # noqa: F821
    stages.package,
    inputs=dict(snakemake.input.items()),  # noqa: F821
    out_dir=snakemake.output[0],  # noqa: F821
    settings=dict(snakemake.params.settings),  # noqa: F821
    versions_log=snakemake.params.versions_log,  # noqa: F821
)
