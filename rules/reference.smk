rule reference:
    """The float32 reference on the evaluation text, once per model and text: per position the top-k
    logits, log-sum-exp and target log-prob, plus greedy answers to the chat prompts; read by every
    quantization's evaluation. Streams the checkpoint layer by layer (peak memory ~ one layer)."""
    input:
        unpack(lambda wildcards: {"model": download_dir(wildcards.model), **reference_templates(wildcards)}),
        text=evaluation_text_input,
    output:
        directory(reference_dir("{model}")),
    params:
        evaluation=lambda wildcards: MODELS[wildcards.model]["evaluation"],
        templates=lambda wildcards: list(reference_templates(wildcards)),
        max_len=lambda wildcards: MODELS[wildcards.model]["host"]["context_window_size"],
        code=code_version("reference.py", "reference_cache.py", "evaluation_text.py", "families.py", "loader", "model/config.py", "data"),
    threads: 2
    log:
        "results/logs/reference/{model}.log",
    benchmark:
        "results/benchmarks/reference/{model}.tsv"
    conda:
        "../envs/build.yaml"
    script:
        "../scripts/reference.py"
