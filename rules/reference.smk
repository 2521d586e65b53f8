rule reference:
    """The float32 reference on the evaluation text, once per model and text: per position the top-k
    logits, log-sum-exp and target log-prob, read by every quantization's evaluation. Streams the
    checkpoint layer by layer (peak memory about one layer's weights plus the text's activations)."""
    input:
        model_dir=download_dir("{model}"),
        watched=lambda wildcards: setting_file(MODELS[wildcards.model]["evaluation"]["text"]),
    output:
        directory(reference_dir("{model}")),
    params:
        text=lambda wildcards: MODELS[wildcards.model]["evaluation"]["text"],
        max_tokens=lambda wildcards: MODELS[wildcards.model]["evaluation"]["max_tokens"],
        max_len=lambda wildcards: MODELS[wildcards.model]["host"]["context_window_size"],
        code=code_version("reference"),
    threads: 2
    log:
        log_file("reference", "{model}"),
    benchmark:
        benchmark_file("reference", "{model}")
    conda:
        "../envs/build.yaml"
    script:
        "../scripts/reference.py"


rule reference_answers:
    """The reference's greedy answers to the chat prompts under the model's family template and under
    seed-compat, beside which every build's answers are shown."""
    input:
        model_dir=download_dir("{model}"),
        family_files=reference_templates,
        watched=lambda wildcards: setting_file(MODELS[wildcards.model]["evaluation"]["prompts"]),
    output:
        directory(reference_answers_dir("{model}")),
    params:
        prompts=lambda wildcards: MODELS[wildcards.model]["evaluation"]["prompts"],
        answer_tokens=lambda wildcards: MODELS[wildcards.model]["evaluation"]["answer_tokens"],
        code=code_version("reference_answers"),
    threads: 2
    log:
        log_file("reference_answers", "{model}"),
    benchmark:
        benchmark_file("reference_answers", "{model}")
    conda:
        "../envs/build.yaml"
    script:
        "../scripts/reference_answers.py"
