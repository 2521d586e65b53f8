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
