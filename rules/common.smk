# Config helpers and version inputs shared by every rule. The rules stay thin; all logic about *which*
# files a job needs lives here, all logic about *how* to make them (and every path and name) in src/hf2mlc/.

import functools
import os
import sys
from pathlib import Path

from snakemake.common.tbdstring import TBDString
from snakemake.utils import validate

WORKFLOW_DIR = Path(workflow.basedir)
# This checkout's hf2mlc, whatever is installed: the DAG is built by the same code the jobs run.
sys.path.insert(0, str(WORKFLOW_DIR / "src"))

from hf2mlc.closure import code_digest
from hf2mlc.evaluation_text import bundled_file, names_a_file
from hf2mlc.families import load_family
from hf2mlc.layout import (
    EVALUATION_REPORT,
    benchmark_file,
    benchmarks_dir,
    check_dir,
    compile_dir,
    download_dir,
    evaluate_dir,
    reference_answers_dir,
    reference_dir,
    log_file,
    package_dir,
    patch_dir,
    plot_file,
    quality_table,
    summary_table,
    tokenizer_dir,
    upload_record,
    versions_log,
    weights_dir,
)
from hf2mlc.resources import mem_mb_for_model
from hf2mlc.spec import (
    CALIBRATED_METHOD_PATTERN,
    DEFAULT_CALIBRATION_TEXT,
    DEFAULT_FFN_OUT_DTYPE,
    DEVICES,
    QUANTIZATION_PATTERN,
    RTN,
    TARGETS,
    CalibrationSpec,
    PackageSpec,
    TargetSpec,
    WeightSpec,
    mlc_model_id,
    model_lib_name,
)

validate(config, schema="../config/schema.yaml")

FAMILIES_DIR = WORKFLOW_DIR / "config" / "families"


def _merged_model(entry):
    """A model entry with the defaults filled in, so rules never look at `defaults` themselves."""
    defaults = config["defaults"]
    merged = {
        "id": entry["id"],
        "source": entry["source"],
        "name": entry["name"],
        "family": entry.get("family", defaults["family"]),
        "enabled": entry.get("enabled", True),
        "targets": {},
        "host": {**defaults["host"], **entry.get("host", {})},
        "max_logit_rel_error": defaults["max_logit_rel_error"],
        "evaluation": {**defaults["evaluation"], **entry.get("evaluation", {})},
        "calibration_text": entry.get("calibration_text", defaults.get("calibration_text", DEFAULT_CALIBRATION_TEXT)),
    }
    for device in DEVICES:
        merged["targets"][device] = {
            "method": RTN.method.name,
            **defaults["targets"].get(device, {}),
            **entry.get("targets", {}).get(device, {}),
        }
        for key in ("quantization", "context_window_size", "prefill_chunk_size", "bundle_weight"):
            if key not in merged["targets"][device]:
                raise ValueError(
                    f"config/config.yaml: models[{entry['id']}].targets.{device}.{key} is not set "
                    f"and has no default under defaults.targets.{device}; add it."
                )
    methods = {}
    for device, settings in merged["targets"].items():
        methods.setdefault(settings["quantization"], {})[device] = settings["method"]
    for quant, by_device in methods.items():
        if len(set(by_device.values())) > 1:  # one host check and evaluation per quantization
            raise ValueError(
                f"config/config.yaml: models[{entry['id']}] builds {quant} with different methods {by_device}; "
                "devices that share a quantization must share its method."
            )
    family_file = FAMILIES_DIR / f"{merged['family']}.yaml"
    if not family_file.is_file():
        known = sorted(p.stem for p in FAMILIES_DIR.glob("*.yaml"))
        raise ValueError(
            f"config/config.yaml: models[{entry['id']}].family is {merged['family']!r}, but "
            f"{family_file.relative_to(workflow.basedir)} does not exist; choose one of {known}."
        )
    return merged


_ids = [entry["id"] for entry in config["models"]]
_dupes = sorted({i for i in _ids if _ids.count(i) > 1})
if _dupes:
    raise ValueError(f"config/config.yaml: model id(s) {_dupes} appear more than once; ids must be unique.")

MODELS = {entry["id"]: _merged_model(entry) for entry in config["models"]}
ENABLED = [m for m, spec in MODELS.items() if spec["enabled"]]


def device_quant(model, device):
    return MODELS[model]["targets"][device]["quantization"]


def device_method(model, device):
    return MODELS[model]["targets"][device]["method"]


def quant_method(model, quant):
    """The method of the devices that use ``quant`` (checked equal when the config is read)."""
    return next(s["method"] for s in MODELS[model]["targets"].values() if s["quantization"] == quant)


def quant_weights_dir(wildcards):
    """The weights a quantization's host check and evaluation run on: those its devices ship."""
    return weights_dir(wildcards.model, wildcards.quant, method=quant_method(wildcards.model, wildcards.quant))


def calibration_spec(wildcards):
    """How calibrated weights choose their codes: the method, the model's calibration text, and its
    evaluation text (which the calibration text must not overlap)."""
    spec = MODELS[wildcards.model]
    return CalibrationSpec.create(
        wildcards.method, spec["calibration_text"], evaluation_text=spec["evaluation"]["text"]
    ).as_params()


def host_quants(model):
    """Every quantization a device of this model uses: each gets a host build for checks and evaluation."""
    return sorted({device_quant(model, d) for d in DEVICES})


def local_source(wildcards):
    """Every file of a local checkpoint directory is an input: replacing one in place (its mtime changes,
    the directory's does not) or adding or removing one reruns the download stage and what follows."""
    source = MODELS[wildcards.model]["source"]
    if source == "demo" or source.startswith(("demo:", "hf://")):
        return []
    # local(): files outside results/, never staged through a storage provider (profiles/kubernetes).
    root = Path(source)
    if not root.is_dir():
        return [local(source)]  # Snakemake reports it missing, by its name
    # The files the download stage selects from (hf2mlc.hub reads the directory's top level).
    return sorted(local(str(p)) for p in root.iterdir() if p.is_file())


def family_file(wildcards):
    # Relative (as all job paths are), so no artifact records where the checkout lives; local(): a file of
    # the checkout, never staged through a storage provider (profiles/kubernetes).
    return local(f"config/families/{MODELS[wildcards.model]['family']}.yaml")


@functools.cache
def family_overrides(model):
    """The family's dtype overrides, read by the validated loader: they change the weights, so they are
    build parameters (not files), and editing a template elsewhere in the same YAML does not rerun builds."""
    return load_family(FAMILIES_DIR / f"{MODELS[model]['family']}.yaml").overrides


def ffn_out_dtype(model):
    return family_overrides(model).get("ffn_out_dtype", DEFAULT_FFN_OUT_DTYPE)


def weight_spec(wildcards):
    """What convert makes: the quantization and the family's ffn_out_dtype."""
    return WeightSpec.create(wildcards.quant, ffn_out_dtype(wildcards.model)).as_params()


def target_spec(model, target, quant):
    """The one typed spec of a library (hf2mlc.spec): windows, weights and name, decided here once."""
    spec = MODELS[model]
    settings = spec["host"] if target == "host" else spec["targets"][target]
    return TargetSpec.create(
        target=target,
        quantization=quant,
        lib_name=model_lib_name(spec["name"], quant, target),
        context_window_size=settings["context_window_size"],
        prefill_chunk_size=settings["prefill_chunk_size"],
        ffn_out_dtype=ffn_out_dtype(model),
    )


def compile_spec(wildcards):
    return target_spec(wildcards.model, wildcards.target, wildcards.quant).as_params()


def code_version(stage):
    """Digest of the code rule ``stage`` runs (its script and the import closure inside src/hf2mlc,
    computed from the code: hf2mlc.closure), as a parameter: editing that code reruns the job (Snakemake
    tracks the rule's own script, not the package it imports)."""
    return code_digest(stage, WORKFLOW_DIR)


def mem_mb(rule):
    """``resources: mem_mb`` of a job of ``rule``: from the parameter count in its model's config.json
    (hf2mlc.resources, fitted to measured peaks), so a cluster scheduler can place it."""

    def job_mem_mb(wildcards, input):
        try:
            return mem_mb_for_model(rule, getattr(input, "model_dir", None))
        except FileNotFoundError:
            # Not downloaded yet: "to be determined", which Snakemake evaluates again once the job is ready.
            return TBDString()

    return job_mem_mb


def compile_gate(wildcards):
    """The iPhone compile starts only after the unquantized Mac library is built and its host twin passed
    the check against transformers, as the write-up checked the Mac build first."""
    if wildcards.target != "iphone":
        return []
    mac_quant = device_quant(wildcards.model, "mac")
    return [
        compile_dir(wildcards.model, "mac", mac_quant),
        check_dir(wildcards.model, mac_quant),
    ]


def package_inputs(wildcards):
    quant = device_quant(wildcards.model, wildcards.device)
    return {
        "model_dir": download_dir(wildcards.model),
        "patch_dir": patch_dir(wildcards.model),
        "tokenizer_dir": tokenizer_dir(wildcards.model),
        "weights_dir": weights_dir(wildcards.model, quant, method=device_method(wildcards.model, wildcards.device)),
        "compile_dir": compile_dir(wildcards.model, wildcards.device, quant),
        "evaluate_dir": evaluate_dir(wildcards.model, quant),
    }


def package_spec(wildcards):
    spec = MODELS[wildcards.model]
    quant = device_quant(wildcards.model, wildcards.device)
    return PackageSpec(
        device=wildcards.device,
        model_id=mlc_model_id(spec["name"], quant),
        name=spec["name"],
        source=spec["source"],
        family=spec["family"],
        quantization=quant,
        bundle_weight=spec["targets"][wildcards.device]["bundle_weight"],
        hub_repo=(
            upload_repo(wildcards.model, wildcards.device) if wildcards.device in config["upload"]["devices"] else None
        ),
        quality_gate=spec["targets"][wildcards.device].get("quality_gate"),
        method=device_method(wildcards.model, wildcards.device),
    ).as_params()


def upload_repo(model, device):
    spec = MODELS[model]
    quant = device_quant(model, device)
    return config["upload"]["repo"].format(name=spec["name"], quantization=quant, device=device)


# ---- named targets ----
def bundles(device):
    return [package_dir(m, device) for m in ENABLED]


def evaluations():
    return [evaluate_dir(m, q) for m in ENABLED for q in host_quants(m)]


def uploads():
    return [upload_record(m, d) for m in ENABLED for d in config["upload"]["devices"]]


def setting_file(value):
    """The file an evaluation text or prompt list setting names, a file path or a bundled set
    (src/hf2mlc/data/<name>.txt), as a watched input: editing it reruns the jobs that read it. (Code
    digests cannot cover it: config, not code, names it.) demo_heldout is part of the download. local():
    a file of the checkout or the user's, never staged through a storage provider."""
    if names_a_file(value):
        return [local(value)]
    bundled = bundled_file(value)
    if bundled is None:
        return []
    return [local(os.path.relpath(bundled, WORKFLOW_DIR))]


def reference_templates(wildcards):
    """The family files whose templates the reference answers under: the model's own first, then seed-compat
    (the 2023 write-up's), so that template errors are told apart from quantization errors."""
    families = dict.fromkeys([MODELS[wildcards.model]["family"], "seed-compat"])
    return [local(f"config/families/{name}.yaml") for name in families]


# ---- fail fast: what can be checked before any job runs is checked now (hf2mlc.preflight) ----
def _preflight_plan(model):
    """What one enabled model will make, and where its checkpoint already is (if anywhere yet)."""
    spec = MODELS[model]
    libs = [(d, device_quant(model, d)) for d in DEVICES] + [("host", q) for q in host_quants(model)]
    source = spec["source"]
    if source == "demo" or source.startswith(("demo:", "hf://")):
        downloaded = Path(download_dir(model))
        on_disk = downloaded if (downloaded / "manifest.json").is_file() else None
    else:
        on_disk = Path(source)
    return {
        "id": model,
        "name": spec["name"],
        "targets": {**{d: spec["targets"][d] for d in DEVICES}, "host": spec["host"]},
        "bundles": sorted({mlc_model_id(spec["name"], q) for _, q in libs}),
        "model_libs": sorted({model_lib_name(spec["name"], q, t) for t, q in libs}),
        "hub_repos": [upload_repo(model, d) for d in config["upload"]["devices"]],
        "checkpoint": on_disk,
    }


def _preflight():
    from hf2mlc.errors import UserError
    from hf2mlc.layout import RESULTS
    from hf2mlc.preflight import check_workflow, check_writable

    try:
        check_writable(Path(RESULTS))
        check_workflow([_preflight_plan(m) for m in ENABLED])
    except UserError as err:  # one line, as from every stage; Snakemake would print a traceback
        print(f"hf2mlc: {err}", file=sys.stderr)
        sys.exit(1)


_preflight()
