rule package:
    """Assemble the bundle in MLC LLM's layout (bundle/, lib/, mlc-app-config.json) with its model card."""
    input:
        unpack(package_inputs),
    output:
        directory(package_dir("{model}", "{device}")),
    params:
        spec=package_spec,
        model="{model}",
        versions_log=versions_log(),
        code=code_version("package"),
    log:
        log_file("package", "{model}/{device}"),
    benchmark:
        benchmark_file("package", "{model}/{device}")
    conda:
        "../envs/package.yaml"
    script:
        "../scripts/package.py"
