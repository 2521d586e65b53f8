rule convert:
    """Quantize and shard the weights once per quantization; every target of that quantization shares them."""
    input:
        model=download_dir("{model}"),
    output:
        directory(weights_dir("{model}", "{quant}")),
    params:
        quantization="{quant}",
        ffn_out_dtype=ffn_out_dtype,
        code=code_version(
            "convert.py", "tensor_cache.py", "loader", "quantization/__init__.py", "quantization/group.py", "model/params.py", "model/config.py"
        ),
    threads: 2
    log:
        "results/logs/convert/{model}/{quant}.log",
    benchmark:
        "results/benchmarks/convert/{model}/{quant}.tsv"
    conda:
        "../envs/build.yaml"
    script:
        "../scripts/convert.py"


rule build:
    """Compile the model library for one target; host builds are run against transformers as a check."""
    input:
        model=download_dir("{model}"),
        weights=weights_dir("{model}", "{quant}"),
        gate=build_gate,
    output:
        directory(build_dir("{model}", "{target}", "{quant}")),
    params:
        target="{target}",
        quantization="{quant}",
        settings=target_settings,
        ffn_out_dtype=ffn_out_dtype,
        lib_name=lambda wildcards: model_lib_name(wildcards.model, wildcards.quant, wildcards.target),
        max_logit_rel_error=lambda wildcards: MODELS[wildcards.model]["max_logit_rel_error"],
        evaluation_text=lambda wildcards: MODELS[wildcards.model]["evaluation"]["text"],
        code=code_version(
            "compile.py", "model", "quantization", "compiler_pass", "runtime.py", "evaluate.py", "evaluation_text.py",
            "reference.py", "tensor_cache.py", "loader", "data",
        ),
    threads: 2
    log:
        "results/logs/build/{model}/{target}-{quant}.log",
    benchmark:
        "results/benchmarks/build/{model}/{target}-{quant}.tsv"
    conda:
        "../envs/build.yaml"
    script:
        "../scripts/build.py"
