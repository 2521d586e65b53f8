rule tokenizer:
    """spiece.model → tokenizer.json, proved equal to SentencePiece on the project's Japanese test set."""
    input:
        model_dir=download_dir("{model}"),
    output:
        directory(tokenizer_dir("{model}")),
    params:
        code=code_version("tokenizer"),
    log:
        log_file("tokenizer", "{model}"),
    benchmark:
        benchmark_file("tokenizer", "{model}")
    conda:
        "../envs/tokenizer.yaml"
    script:
        "../scripts/tokenizer.py"
