rule evaluate:
    """What quantization cost: the (checked) host library of one quantization against transformers
    (float32) on held-out text: perplexity, top-1 agreement, KL divergence."""
    input:
        model_dir=download_dir("{model}"),
        weights_dir=weights_dir("{model}", "{quant}"),
        compile_dir=compile_dir("{model}", "host", "{quant}"),
        check_dir=check_dir("{model}", "{quant}"),
    output:
        directory(evaluate_dir("{model}", "{quant}")),
    log:
        log_file("evaluate", "{model}/{quant}"),
    benchmark:
        benchmark_file("evaluate", "{model}/{quant}")
    conda:
        "../envs/build.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb("evaluate"),
    params:
        quantization="{quant}",
        evaluation_text=lambda wildcards: MODELS[wildcards.model]["evaluation_text"],
        code=code_version("evaluate"),
    script:
        "../scripts/evaluate.py"
