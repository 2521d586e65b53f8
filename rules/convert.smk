rule convert:
    """Quantize and shard the weights once per quantization; every target of that quantization shares them."""
    input:
        model_dir=download_dir("{model}"),
    output:
        directory(weights_dir("{model}", "{quant}")),
    params:
        spec=weight_spec,
        code=code_version("convert"),
    threads: 2
    log:
        log_file("convert", "{model}/{quant}"),
    benchmark:
        benchmark_file("convert", "{model}/{quant}")
    conda:
        "../envs/build.yaml"
    script:
        "../scripts/convert.py"
