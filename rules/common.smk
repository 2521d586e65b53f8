# Config helpers, output paths and version inputs shared by every rule. The rules stay thin; all logic
# about *which* files a job needs lives here, all logic about *how* to make them lives in src/hf2mlc/.

import hashlib
import re
from pathlib import Path

import yaml
from snakemake.utils import validate

validate(config, schema="../config/schema.yaml")

DEVICES = ("iphone", "mac")
RESULTS = "results"
FAMILIES_DIR = Path(workflow.basedir) / "config" / "families"
PACKAGE_SRC = Path(workflow.basedir) / "src" / "hf2mlc"


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
    }
    for device in DEVICES:
        merged["targets"][device] = {
            **defaults["targets"].get(device, {}),
            **entry.get("targets", {}).get(device, {}),
        }
        for key in ("quantization", "context_window_size", "prefill_chunk_size"):
            if key not in merged["targets"][device]:
                raise ValueError(
                    f"config/config.yaml: models[{entry['id']}].targets.{device}.{key} is not set "
                    f"and has no default under defaults.targets.{device}; add it."
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


def model_spec(wildcards):
    return MODELS[wildcards.model]


def device_quant(model, device):
    return MODELS[model]["targets"][device]["quantization"]


def host_quants(model):
    """Every quantization a device of this model uses: each gets a host build for checks and evaluation."""
    return sorted({device_quant(model, d) for d in DEVICES})


def target_settings(wildcards):
    """Context window and prefill chunk of one build target."""
    spec = MODELS[wildcards.model]
    settings = spec["host"] if wildcards.target == "host" else spec["targets"][wildcards.target]
    return {
        "context_window_size": settings["context_window_size"],
        "prefill_chunk_size": settings["prefill_chunk_size"],
    }


def local_source(wildcards):
    """A local checkpoint directory is an input, so editing it reruns the download stage."""
    source = MODELS[wildcards.model]["source"]
    if source == "demo" or source.startswith("hf://"):
        return []
    return [source]


def family_file(wildcards):
    # Relative (as all job paths are), so no artifact records where the checkout lives.
    return f"config/families/{MODELS[wildcards.model]['family']}.yaml"


def family_overrides(model):
    """The family's dtype overrides: they change the weights, so they are build parameters (not files),
    and editing a template elsewhere in the same YAML does not rerun the builds."""
    path = FAMILIES_DIR / f"{MODELS[model]['family']}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return dict(sorted((data.get("overrides") or {}).items()))


def ffn_out_dtype(wildcards):
    return family_overrides(wildcards.model).get("ffn_out_dtype", "float32")


def mlc_model_id(model, quant):
    """MLC's naming: <name>-<quantization>-MLC, as in mlc-ai's own Hub repos."""
    return f"{MODELS[model]['name']}-{quant}-MLC"


def model_lib_name(model, quant, target):
    """The model library's name: the MLC model id and target, with characters a C symbol prefix cannot
    hold (the iPhone system library's) replaced, e.g. japanese-large-lm-3_6b-…-q4f16_0-MLC-iphone."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{mlc_model_id(model, quant)}-{target}")


def code_version(*relpaths):
    """Digest of the library code a job runs, as a parameter: editing that code reruns the job
    (Snakemake tracks the rule's own script, not the package it imports)."""
    digest = hashlib.sha256()
    for rel in relpaths:
        root = PACKAGE_SRC / rel
        if not root.exists():
            raise ValueError(f"code_version: src/hf2mlc/{rel} does not exist; fix the path in rules/.")
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for path in files:
            if not path.is_file() or path.suffix == ".pyc":
                continue
            digest.update(path.relative_to(PACKAGE_SRC).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ---- output paths: one place, so rules and targets agree ----
def download_dir(model):
    return f"{RESULTS}/download/{model}"


def patch_dir(model):
    return f"{RESULTS}/patch/{model}"


def tokenizer_dir(model):
    return f"{RESULTS}/tokenizer/{model}"


def weights_dir(model, quant):
    return f"{RESULTS}/weights/{model}/{quant}"


def build_dir(model, target, quant):
    return f"{RESULTS}/build/{model}/{target}-{quant}"


def reference_dir(model):
    return f"{RESULTS}/reference/{model}"


def evaluate_dir(model, quant):
    return f"{RESULTS}/evaluate/{model}/{quant}"


def package_dir(model, device):
    return f"{RESULTS}/package/{model}/{device}"


def upload_record(model, device):
    return f"{RESULTS}/upload/{model}/{device}.json"


def build_gate(wildcards):
    """The iPhone build starts only after the unquantized Mac build and its host twin passed their checks,
    as the write-up checked the Mac build first."""
    if wildcards.target != "iphone":
        return []
    mac_quant = device_quant(wildcards.model, "mac")
    return [
        build_dir(wildcards.model, "mac", mac_quant),
        build_dir(wildcards.model, "host", mac_quant),
    ]


def package_inputs(wildcards):
    quant = device_quant(wildcards.model, wildcards.device)
    return {
        "model": download_dir(wildcards.model),
        "patch": patch_dir(wildcards.model),
        "tokenizer": tokenizer_dir(wildcards.model),
        "weights": weights_dir(wildcards.model, quant),
        "build": build_dir(wildcards.model, wildcards.device, quant),
        "evaluate": evaluate_dir(wildcards.model, quant),
    }


def package_params(wildcards):
    spec = MODELS[wildcards.model]
    quant = device_quant(wildcards.model, wildcards.device)
    return {
        "device": wildcards.device,
        "model_id": mlc_model_id(wildcards.model, quant),
        "name": spec["name"],
        "source": spec["source"],
        "family": spec["family"],
        "quantization": quant,
        **spec["targets"][wildcards.device],
    }


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


def evaluation_text_input(wildcards):
    """An evaluation text given as a file is an input (editing it reruns the reference); bundled sets are
    covered by the reference rule's code version."""
    text = MODELS[wildcards.model]["evaluation"]["text"]
    return [text] if "/" in text or text.endswith(".txt") else []


def reference_templates(wildcards):
    """The family files whose templates the reference answers under: the model's own and seed-compat."""
    families = dict.fromkeys([MODELS[wildcards.model]["family"], "seed-compat"])
    return {name: f"config/families/{name}.yaml" for name in families}
