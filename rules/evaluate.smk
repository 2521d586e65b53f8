rule evaluate:
    """What quantization cost: the (checked) host library of one quantization against the stored float32
    reference: perplexity with its interval, KL, top-1 agreement, and greedy answers beside the reference's."""
    input:
        model_dir=download_dir("{model}"),
        weights_dir=weights_dir("{model}", "{quant}"),
        compile_dir=compile_dir("{model}", "host", "{quant}"),
        check_dir=check_dir("{model}", "{quant}"),
        reference_dir=lambda wildcards: reference_dir(wildcards.model),
        answers_dir=lambda wildcards: reference_answers_dir(wildcards.model),
    output:
        directory(evaluate_dir("{model}", "{quant}")),
    params:
        quantization="{quant}",
        code=code_version("evaluate"),
    threads: 2
    log:
        log_file("evaluate", "{model}/{quant}"),
    benchmark:
        benchmark_file("evaluate", "{model}/{quant}")
    conda:
        "../envs/build.yaml"
    script:
        "../scripts/evaluate.py"
