rule convert:
    """Quantize and shard the weights once per quantization; every target of that quantization shares them."""
    input:
        model_dir=download_dir("{model}"),
    output:
        directory(weights_dir("{model}", "{quant}")),
    log:
        log_file("convert", "{model}/{quant}"),
    benchmark:
        benchmark_file("convert", "{model}/{quant}")
    conda:
        "../envs/build.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb("convert"),
    params:
        spec=weight_spec,
        code=code_version("convert"),
    script:
        "../scripts/convert.py"


rule convert_calibrated:
    """The same format with codes and scales chosen on calibration text (hf2mlc.quantization.METHODS): run
    the float32 model over the text, then quantize layer by layer; rtn's weights stay in their own path."""
    input:
        model_dir=download_dir("{model}"),
        watched=lambda wildcards: setting_file(MODELS[wildcards.model]["calibration_text"]),
    output:
        directory(weights_dir("{model}", "{quant}", method="{method}")),
    log:
        log_file("convert", "{model}/{quant}-{method}"),
    benchmark:
        benchmark_file("convert", "{model}/{quant}-{method}")
    wildcard_constraints:
        method=CALIBRATED_METHOD_PATTERN,
    conda:
        "../envs/build.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb("convert_calibrated"),
    params:
        spec=weight_spec,
        calibration=calibration_spec,
        code=code_version("convert"),
    script:
        "../scripts/convert.py"
