"""Snakemake entry point of rule upload (rules/upload.smk)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # noqa: F821  (run this checkout's hf2mlc, in any env)

from hf2mlc import stages  # noqa: E402
from hf2mlc.snakemake_script import run_stage  # noqa: E402

records = {
    record: {"package": package, "repo": snakemake.params.repos[record]}  # noqa: F821
    for record, package in zip(snakemake.output.records, snakemake.input.packages)  # noqa: F821
}
run_stage(
    snakemake,  # noqa: F821
    stages.upload,
    records=records,
    enabled=snakemake.params.enabled,  # noqa: F821
    private=snakemake.params.private,  # noqa: F821
)
