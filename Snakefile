# hf2mlc: Hugging Face GPT-NeoX → MLC LLM bundles for iPhone and Mac.
#   snakemake --cores 8 iphone_bundle     # results/package/<model>/iphone/
# The stages: download → patch → convert → compile (mac q0f16, iphone q4f16_0, host) → check (host, against
# transformers; gates the iPhone compile) → evaluate → tokenizer → package → upload.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9_.-]*",
    target="|".join(TARGETS),
    device="|".join(DEVICES),
    quant=QUANTIZATION_PATTERN,


include: "rules/download.smk"
include: "rules/patch.smk"
include: "rules/convert.smk"
include: "rules/compile.smk"
include: "rules/check.smk"
include: "rules/tokenizer.smk"
include: "rules/reference.smk"
include: "rules/evaluate.smk"
include: "rules/package.smk"
include: "rules/upload.smk"


localrules:
    all,
    iphone_bundle,
    mac_bundle,
    evaluate_all,


rule all:
    """Both bundles and the quality reports (not the upload)."""
    default_target: True
    input:
        bundles("iphone"),
        bundles("mac"),
        evaluations(),


rule iphone_bundle:
    """The iPhone bundle of every enabled model."""
    input:
        bundles("iphone"),


rule mac_bundle:
    """The Mac bundle of every enabled model."""
    input:
        bundles("mac"),


rule evaluate_all:
    """The quality of every quantization a device uses, measured on its checked host library."""
    input:
        evaluations(),
