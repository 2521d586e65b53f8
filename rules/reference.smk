rule reference:
    """The float32 reference on the evaluation text, once per model and text: per position the top-k
    logits, log-sum-exp and target log-prob, read by every quantization's evaluation. Streams the
    checkpoint layer by layer (peak memory about one layer's weights plus the text's activations)."""
    input:
        model=download_dir("{model}"),
        text=lambda wildcards: setting_file(MODELS[wildcards.model]["evaluation"]["text"]),
    output:
        directory(reference_dir("{model}")),
    params:
        text=lambda wildcards: MODELS[wildcards.model]["evaluation"]["text"],
        max_tokens=lambda wildcards: MODELS[wildcards.model]["evaluation"]["max_tokens"],
        max_len=lambda wildcards: MODELS[wildcards.model]["host"]["context_window_size"],
        code=code_version("reference.py", "reference_cache.py", "evaluation_text.py", "loader", "model/config.py", "data"),
    threads: 2
    log:
        "results/logs/reference/{model}.log",
    benchmark:
        "results/benchmarks/reference/{model}.tsv"
    conda:
        "../envs/build.yaml"
    script:
        "../scripts/reference.py"


rule reference_answers:
    """The reference's greedy answers to the chat prompts under the model's family template and under
    seed-compat, beside which every build's answers are shown."""
    input:
        unpack(lambda wildcards: {"model": download_dir(wildcards.model), **reference_templates(wildcards)}),
        prompts=lambda wildcards: setting_file(MODELS[wildcards.model]["evaluation"]["prompts"]),
    output:
        directory(reference_answers_dir("{model}")),
    params:
        templates=lambda wildcards: list(reference_templates(wildcards)),
        prompts=lambda wildcards: MODELS[wildcards.model]["evaluation"]["prompts"],
        answer_tokens=lambda wildcards: MODELS[wildcards.model]["evaluation"]["answer_tokens"],
        code=code_version("reference.py", "reference_cache.py", "evaluation_text.py", "families.py", "loader", "data"),
    threads: 2
    log:
        "results/logs/reference_answers/{model}.log",
    benchmark:
        "results/benchmarks/reference_answers/{model}.tsv"
    conda:
        "../envs/build.yaml"
    script:
        "../scripts/reference_answers.py"
