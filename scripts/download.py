"""Snakemake entry point of rule download (rules/download.smk)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821  (run this checkout's hf2mlc, in any env)

from hf2mlc import stages  # noqa: E402
from hf2mlc.snakemake_script import run_stage  # noqa: E402

run_stage(snakemake, stages.download, source=snakemake.params.source, out_dir=snakemake.output[0])  # noqa: F821
