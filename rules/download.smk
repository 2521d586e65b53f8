rule download:
    """Fetch the model (a pinned Hub revision, a local checkpoint, or the embedded demo) with a manifest."""
    input:
        local_source,
    output:
        directory(download_dir("{model}")),
    log:
        log_file("download", "{model}"),
    benchmark:
        benchmark_file("download", "{model}")
    conda:
        "../envs/download.yaml"
    resources:
        mem_mb=mem_mb("download"),
    params:
        source=lambda wildcards: MODELS[wildcards.model]["source"],
        code=code_version("download"),
    script:
        "../scripts/download.py"
