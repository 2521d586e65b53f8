rule download:
    """Fetch the model (a pinned Hub revision, a local checkpoint, or the embedded demo) with a manifest."""
    input:
        local_source,
    output:
        directory(download_dir("{model}")),
    params:
        source=lambda wildcards: MODELS[wildcards.model]["source"],
        code=code_version("download"),
    log:
        log_file("download", "{model}"),
    benchmark:
        benchmark_file("download", "{model}")
    conda:
        "../envs/download.yaml"
    script:
        "../scripts/download.py"
