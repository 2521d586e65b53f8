rule download:
    """Fetch the model (a pinned Hub revision, a local checkpoint, or the embedded demo) with a manifest."""
    input:
        local_source,
    output:
        directory(download_dir("{model}")),
    params:
        source=lambda wildcards: MODELS[wildcards.model]["source"],
        code=code_version("hub", "sources", "demo.py", "demo_corpus.py"),
    log:
        "results/logs/download/{model}.log",
    benchmark:
        "results/benchmarks/download/{model}.tsv"
    conda:
        "../envs/download.yaml"
    script:
        "../scripts/download.py"
