rule patch:
    """The model family's conversation template, stop tokens and dtype overrides, validated against the
    model's own tokenizer: what the write-up patched into MLC LLM's source, as configuration."""
    input:
        model=download_dir("{model}"),
        family=family_file,
    output:
        directory(patch_dir("{model}")),
    params:
        family=lambda wildcards: MODELS[wildcards.model]["family"],
        code=code_version("families.py", *TOKENIZER_READING),
    log:
        "results/logs/patch/{model}.log",
    benchmark:
        "results/benchmarks/patch/{model}.tsv"
    conda:
        "../envs/patch.yaml"
    script:
        "../scripts/patch.py"
