rule patch:
    """The model family's conversation template, stop tokens and dtype overrides, validated against the
    model's own tokenizer: what the write-up patched into MLC LLM's source, as configuration."""
    input:
        model_dir=download_dir("{model}"),
        family_file=family_file,
    output:
        directory(patch_dir("{model}")),
    params:
        code=code_version("patch"),
    log:
        log_file("patch", "{model}"),
    benchmark:
        benchmark_file("patch", "{model}")
    conda:
        "../envs/patch.yaml"
    script:
        "../scripts/patch.py"
