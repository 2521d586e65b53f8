rule tokenizer:
    """spiece.model → tokenizer.json, proved equal to SentencePiece on the project's Japanese test set."""
    input:
        model=download_dir("{model}"),
    output:
        directory(tokenizer_dir("{model}")),
    params:
        code=code_version("tokenizer", "data"),
    log:
        "results/logs/tokenizer/{model}.log",
    benchmark:
        "results/benchmarks/tokenizer/{model}.tsv"
    conda:
        "../envs/tokenizer.yaml"
    script:
        "../scripts/tokenizer.py"
