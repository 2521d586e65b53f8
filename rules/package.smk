rule package:
    """Assemble the bundle in MLC LLM's layout (bundle/, lib/, mlc-app-config.json) with its model card."""
    input:
        unpack(package_inputs),
    output:
        directory(package_dir("{model}", "{device}")),
    params:
        settings=package_params,
        versions_log=f"{RESULTS}/versions.jsonl",
        code=code_version("package.py", "card.py", "gate.py"),
    log:
        "results/logs/package/{model}/{device}.log",
    benchmark:
        "results/benchmarks/package/{model}/{device}.tsv"
    conda:
        "../envs/package.yaml"
    script:
        "../scripts/package.py"
