rule check:
    """Run the host library of one quantization on its weights against the streaming float32 reference
    on the same numbers: a relative error above max_logit_rel_error fails, and the iPhone compile waits on it."""
    input:
        model_dir=download_dir("{model}"),
        weights_dir=weights_dir("{model}", "{quant}"),
        compile_dir=compile_dir("{model}", "host", "{quant}"),
        watched=lambda wildcards: setting_file(MODELS[wildcards.model]["evaluation"]["text"]),
    output:
        directory(check_dir("{model}", "{quant}")),
    params:
        quantization="{quant}",
        evaluation_text=lambda wildcards: MODELS[wildcards.model]["evaluation"]["text"],
        max_logit_rel_error=lambda wildcards: MODELS[wildcards.model]["max_logit_rel_error"],
        code=code_version("check"),
    threads: 2
    log:
        log_file("check", "{model}/{quant}"),
    benchmark:
        benchmark_file("check", "{model}/{quant}")
    conda:
        "../envs/build.yaml"
    script:
        "../scripts/check.py"
