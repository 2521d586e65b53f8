# hf2mlc: Hugging Face GPT-NeoX → MLC LLM bundles for iPhone and Mac.
#   snakemake --cores 8 iphone_bundle     # results/package/<model>/iphone/
# The stages: download → patch → build (mac q0f16, iphone q4f16_0, host checks) → tokenizer → package → upload.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9_.-]*",
    target="iphone|mac|host",
    device="iphone|mac",
    quant="q[0-9]f(16|32)_[0-9]|q0f(16|32)",


include: "rules/download.smk"
include: "rules/patch.smk"
include: "rules/build.smk"
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
    """Host builds of every quantization against transformers."""
    input:
        evaluations(),
