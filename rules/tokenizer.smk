rule tokenizer:
    """spiece.model → tokenizer.json, proved equal to SentencePiece on the project's Japanese test set."""
    input:
        model_dir=download_dir("{model}"),
    output:
        directory(tokenizer_dir("{model}")),
    log:
        log_file("tokenizer", "{model}"),
    benchmark:
        benchmark_file("tokenizer", "{model}")
    conda:
        "../envs/tokenizer.yaml"
    resources:
        mem_mb=mem_mb("tokenizer"),
    params:
        code=code_version("tokenizer"),
    script:
        "../scripts/tokenizer.py"
