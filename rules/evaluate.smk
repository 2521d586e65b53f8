rule evaluate:
    """What quantization cost: the host build of one quantization against transformers (float32) on
    held-out text: perplexity, top-1 agreement, KL divergence."""
    input:
        model=download_dir("{model}"),
        weights=weights_dir("{model}", "{quant}"),
        build=lambda wildcards: build_dir(wildcards.model, "host", wildcards.quant),
    output:
        directory(evaluate_dir("{model}", "{quant}")),
    params:
        quantization="{quant}",
        code=code_version("evaluate.py", "runtime.py", "data", *TOKENIZER_READING),
    threads: 2
    log:
        "results/logs/evaluate/{model}/{quant}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{quant}.tsv"
    conda:
        "../envs/build.yaml"
    script:
        "../scripts/evaluate.py"
