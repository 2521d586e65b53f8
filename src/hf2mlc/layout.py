"""Where every artifact lives: the results/ tree and the names of the files one stage hands to the next.

The rules (rules/common.smk), the stages, the package step and the command line all read these, so a
producer and its consumer can never disagree on a name. Paths are relative (as every Snakemake job path
is), so no artifact records where the checkout lives. Nothing here imports the rest of the package: the
Snakefile imports it while building the DAG.
"""

from __future__ import annotations

RESULTS = "results"

# ---- inter-stage file names (producer → consumer)
MANIFEST = "manifest.json"  # every stage → every consumer (hf2mlc.manifest)
CONV_TEMPLATE = "conv_template.json"  # patch → package, chat
OVERRIDES = "overrides.json"  # patch → package, chat: the family's dtype overrides and sampling defaults
VALIDATION_REPORT = "validation-report.json"  # patch: the template checked against the tokenizer
LIB_INFO = "lib-info.json"  # compile → check, evaluate, package: the library's files and own metadata
CHECK_REPORT = "check.json"  # check → gates the iPhone compile
EVALUATION_REPORT = "report.json"  # evaluate → package (the card's quality table)
EVALUATION_MARKDOWN = "report.md"  # evaluate: the same, for people
PARITY_REPORT = "parity-report.json"  # tokenizer → package (active vocabulary)
VERSIONS_LOG = "versions.jsonl"  # package: one line per bundle ever produced
VERSIONS_DIR = "versions"  # package: every bundle ever produced, hard-linked (hf2mlc.versions)


def download_dir(model: str, results: str = RESULTS) -> str:
    return f"{results}/download/{model}"


def patch_dir(model: str, results: str = RESULTS) -> str:
    return f"{results}/patch/{model}"


def tokenizer_dir(model: str, results: str = RESULTS) -> str:
    return f"{results}/tokenizer/{model}"


def weights_dir(model: str, quant: str, results: str = RESULTS) -> str:
    return f"{results}/weights/{model}/{quant}"


def compile_dir(model: str, target: str, quant: str, results: str = RESULTS) -> str:
    return f"{results}/compile/{model}/{target}-{quant}"


def check_dir(model: str, quant: str, results: str = RESULTS) -> str:
    return f"{results}/check/{model}/{quant}"


def reference_dir(model: str, results: str = RESULTS) -> str:
    return f"{results}/reference/{model}"


def reference_answers_dir(model: str, results: str = RESULTS) -> str:
    return f"{results}/reference_answers/{model}"


def evaluate_dir(model: str, quant: str, results: str = RESULTS) -> str:
    return f"{results}/evaluate/{model}/{quant}"


def package_dir(model: str, device: str, results: str = RESULTS) -> str:
    return f"{results}/package/{model}/{device}"


def upload_record(model: str, device: str, results: str = RESULTS) -> str:
    return f"{results}/upload/{model}/{device}.json"


def versions_log(results: str = RESULTS) -> str:
    return f"{results}/{VERSIONS_LOG}"


def version_dir(model: str, device: str, version_id: str, results: str = RESULTS) -> str:
    return f"{results}/{VERSIONS_DIR}/{model}/{device}/{version_id}"


def log_file(stage: str, job: str, results: str = RESULTS) -> str:
    """A rule's log, ``job`` naming the job by its wildcards (``"{model}/{quant}"``)."""
    return f"{results}/logs/{stage}/{job}.log"


def benchmark_file(stage: str, job: str, results: str = RESULTS) -> str:
    """A rule's benchmark table, named like its log."""
    return f"{results}/benchmarks/{stage}/{job}.tsv"
