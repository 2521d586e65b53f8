rule evaluate:
    """What quantization cost: the host build of one quantization against the stored float32 reference:
    perplexity with its interval, KL, top-1 agreement, and greedy answers beside the reference's."""
    input:
        model=download_dir("{model}"),
        weights=weights_dir("{model}", "{quant}"),
        build=lambda wildcards: build_dir(wildcards.model, "host", wildcards.quant),
        reference=lambda wildcards: reference_dir(wildcards.model),
    output:
        directory(evaluate_dir("{model}", "{quant}")),
    params:
        quantization="{quant}",
        code=code_version("evaluate.py", "evaluation_text.py", "reference_cache.py", "runtime.py"),
    threads: 2
    log:
        "results/logs/evaluate/{model}/{quant}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{quant}.tsv"
    conda:
        "../envs/build.yaml"
    script:
        "../scripts/evaluate.py"
