rule compile:
    """Compile the model library for one target. No weights: the library takes them at run time."""
    input:
        model_dir=download_dir("{model}"),
        gate=compile_gate,
    output:
        directory(compile_dir("{model}", "{target}", "{quant}")),
    params:
        spec=compile_spec,
        code=code_version("compile"),
    threads: 2
    log:
        log_file("compile", "{model}/{target}-{quant}"),
    benchmark:
        benchmark_file("compile", "{model}/{target}-{quant}")
    conda:
        "../envs/build.yaml"
    script:
        "../scripts/compile.py"
