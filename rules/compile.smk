rule compile:
    """Compile the model library for one target. No weights: the library takes them at run time."""
    input:
        model_dir=download_dir("{model}"),
        gate=compile_gate,
    output:
        directory(compile_dir("{model}", "{target}", "{quant}")),
    log:
        log_file("compile", "{model}/{target}-{quant}"),
    benchmark:
        benchmark_file("compile", "{model}/{target}-{quant}")
    conda:
        "../envs/build.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb("compile"),
    params:
        spec=compile_spec,
        code=code_version("compile"),
    script:
        "../scripts/compile.py"
