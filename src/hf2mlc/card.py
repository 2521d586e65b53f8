"""The model card (README.md) of a bundle, with the Hub's YAML front matter.

It says what a user of the Hub repo needs: what model this is and where it came from, how it was built
(the exact settings, so anyone can rebuild it), what quantization cost on held-out text, and how to run it.
No timestamps: the same inputs give the same card, byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

import yaml


def _front_matter(settings: dict[str, Any], source_metadata: dict[str, Any]) -> dict[str, Any]:
    source = settings["source"]
    front: dict[str, Any] = {
        "library_name": "mlc-llm",
        "license": source_metadata.get("license", "apache-2.0"),
        "language": source_metadata.get("language", ["ja"]),
        "pipeline_tag": "text-generation",
        "tags": ["mlc-llm", "mlc-ai", "gpt_neox", settings["quantization"], settings["device"], "hf2mlc"],
        "quantization": settings["quantization"],
    }
    if source.startswith("hf://"):
        front["base_model"] = source[len("hf://") :].split("@")[0]
        front["base_model_relation"] = "quantized"
    if isinstance(front["language"], str):
        front["language"] = [front["language"]]
    return front


def _quality_table(evaluation: dict[str, Any]) -> str:
    ref = evaluation["reference"]
    build = evaluation["build"]
    rows = [
        "| model | perplexity | Δ perplexity | top-1 agreement | mean KL (nats) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| {ref['name']} | {ref['perplexity']:.3f} | – | – | – |",
        f"| {build['name']} | {build['perplexity']:.3f} | {evaluation['delta_perplexity']:+.3f} "
        f"| {evaluation['top1_agreement']:.2%} | {evaluation['kl_mean']:.4f} |",
    ]
    text = evaluation["text"]
    return "\n".join(rows) + f"\n\nMeasured on {text['tokens']} tokens of {text['name']} ({text['description']}).\n"


def model_card(
    *,
    settings: dict[str, Any],
    chat_config: dict[str, Any],
    evaluation: dict[str, Any] | None,
    source_metadata: dict[str, Any],
    lib_files: list[str],
    model_lib: str,
    estimated_vram: int,
    gate_verdict: dict[str, Any] | None = None,
) -> str:
    """The README.md text."""
    from .gate import card_section, model_index

    front_matter = _front_matter(settings, source_metadata)
    if evaluation:
        front_matter["model-index"] = model_index(settings["model_id"], evaluation, gate_verdict)
    front = yaml.safe_dump(front_matter, allow_unicode=True, sort_keys=False)
    source = settings["source"]
    origin = (
        f"[{source[5:].split('@')[0]}](https://huggingface.co/{source[5:].split('@')[0]})"
        f" at revision `{source.split('@')[1] if '@' in source else 'main'}`"
        if source.startswith("hf://")
        else "the small demo GPT-NeoX that hf2mlc trains itself (LINE's architecture options, a generated Japanese corpus)"
        if source == "demo"
        else f"a local checkpoint ({source})"
    )
    template = chat_config["conv_template"]
    build_settings = {
        "device": settings["device"],
        "quantization": settings["quantization"],
        "context_window_size": chat_config["context_window_size"],
        "prefill_chunk_size": chat_config["prefill_chunk_size"],
        "family": settings["family"],
        "ffn_out_dtype": chat_config["model_config"]["ffn_out_dtype"],
        "model_lib": model_lib,
        "estimated_vram_bytes": estimated_vram,
        "hf2mlc": chat_config["hf2mlc"],
    }
    parts = [
        f"---\n{front}---\n",
        f"# {settings['model_id']}\n",
        f"{settings['name']} converted to [MLC LLM](https://llm.mlc.ai) format for **{settings['device']}**, "
        f"quantization `{settings['quantization']}`, from {origin}.\n",
        "Built by hf2mlc — a Snakemake workflow on apache-tvm from PyPI — with MLC LLM's "
        "formats as the contract: `tensor-cache.json` + `params_shard_*.bin` weights, `mlc-chat-config.json`, "
        "`tokenizer.json`, and a model library compiled for the device (`lib/`). The commit that added these "
        "files is tagged with the bundle's version id (a digest of its files).\n",
        "## Prompt format\n",
        "The conversation template in `mlc-chat-config.json` (validated against the model's own tokenizer):\n",
        "```json\n" + json.dumps(template, indent=2, ensure_ascii=False) + "\n```\n",
        "## Quality after quantization\n",
        (_quality_table(evaluation) if evaluation else "Not measured for this bundle.\n"),
        "## Quality gate\n",
        card_section(gate_verdict),
        "## Build settings\n",
        "```json\n" + json.dumps(build_settings, indent=2, ensure_ascii=False, sort_keys=True) + "\n```\n",
        "Libraries: " + ", ".join(f"`lib/{name}`" for name in lib_files) + ". The objects reference `TVMFFI*` "
        "symbols: link them with a TVM runtime of the version named above.\n",
        "## Use\n",
        "iPhone: add the `bundle/` folder and `lib/libmodel_iphone.a` to MLC LLM's iOS app, with the entry "
        "from `bundle/mlc-app-config.json`. Mac: `mlc_llm chat <this repo> --model-lib lib/<library>.dylib`.\n",
    ]
    return "\n".join(parts)
