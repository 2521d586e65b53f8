"""The model card (README.md) of a bundle, with the Hub's YAML front matter.

It says what a user of the Hub repo needs: what model this is and where it came from, how it was built
(the exact settings, so anyone can rebuild it), what quantization cost on held-out text, and how to run it.
No timestamps: the same inputs give the same card, byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

import yaml


#: Tags of mlc-ai's own converted repos (the Hub lists them under these), then hf2mlc's own.
MLC_TAGS = ("mlc-llm", "web-llm")


def hub_model_id(source: str) -> str | None:
    """owner/name of a ``hf://owner/name@revision`` source; None for the demo or a local checkpoint."""
    return source[len("hf://") :].split("@")[0] if source.startswith("hf://") else None


def _front_matter(
    settings: dict[str, Any], source_metadata: dict[str, Any], model_index: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """The Hub's card metadata: mlc-ai's fields (library_name, base_model, tags) plus what their cards
    leave out (license and language inherited from the source card, base_model_relation)."""
    front: dict[str, Any] = {"library_name": "mlc-llm"}
    base = hub_model_id(settings["source"])
    if base is not None:
        front["base_model"] = base
        front["base_model_relation"] = "quantized"
    language = source_metadata.get("language", ["ja"])
    front.update(
        {
            "license": source_metadata.get("license", "apache-2.0"),
            "language": [language] if isinstance(language, str) else list(language),
            "pipeline_tag": "text-generation",
            "tags": [*MLC_TAGS, "gpt_neox", settings["quantization"], settings["device"], "hf2mlc"],
            "quantization": settings["quantization"],
        }
    )
    # The Hub's evaluation results (model-index), from the quality gate's measurements, go last.
    if model_index:
        front["model-index"] = model_index
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


def _tokenizer_section(report: dict[str, Any]) -> str:
    """What the bundle's tokenizer is and how it was proved equal to the model's own (parity-report.json)."""
    shipped, refs = report["shipped"], report["references"]
    info = report["mlc"]["tokenizer_info"]
    if shipped["loaded_by"] == "sentencepiece":
        text = (
            f"`{shipped['file']}` is the model's own `{shipped['source']}`, which MLC's runtime tokenizes with "
            f"SentencePiece itself. Token ids and decoded text equal SentencePiece's (sentencepiece "
            f"{refs['sentencepiece']}) on {report['ids_match']} of {report['cases']} test cases "
            f"({report['tokens']} tokens, {report['byte_fallback_tokens']} of them byte fallback, "
            f"{report['unk_tokens']} unknown)."
        )
        alternative = report.get("tokenizer_json_alternative") or {}
        if "parity" in alternative:
            text += (
                f" A `tokenizer.json` converted from it (tokenizers {refs['tokenizers']}) matched on "
                f"{alternative['ids_match_sentencepiece']} of {alternative['cases']} and is not shipped: on real "
                "text it can differ where SentencePiece's float32 lattice sums break near-ties differently."
            )
    else:
        text = (
            f"`{shipped['file']}` is the model's own, shipped unchanged (tokenizers {refs['tokenizers']}): "
            f"{report['round_trip_match']} of {report['round_trip_judged']} test cases come back unchanged from "
            f"encode → decode ({report['tokens']} tokens); its special tokens and ids agree with config.json."
        )
    return text + f" `tokenizer_info`: `{json.dumps(info, sort_keys=True)}`.\n"


def _origin(source: str, source_commit: str | None) -> str:
    base = hub_model_id(source)
    if base is not None:
        revision = source.split("@")[1] if "@" in source else "main"
        pinned = f" (commit `{source_commit}`)" if source_commit and source_commit != revision else ""
        return f"[{base}](https://huggingface.co/{base}) at revision `{revision}`{pinned}"
    if source == "demo" or source.startswith("demo:"):
        return "the small demo GPT-NeoX that hf2mlc trains itself (LINE's architecture options, a generated Japanese corpus)"
    return f"a local checkpoint ({source})"


def model_card(
    *,
    settings: dict[str, Any],
    chat_config: dict[str, Any],
    evaluation: dict[str, Any] | None,
    source_metadata: dict[str, Any],
    lib_files: list[str],
    model_lib: str,
    estimated_vram: int,
    tokenizer: dict[str, Any] | None = None,
    source_commit: str | None = None,
    gate_verdict: dict[str, Any] | None = None,
) -> str:
    """The README.md text; ``tokenizer``: the tokenizer stage's parity report; ``gate_verdict``: the
    quality gate's (hf2mlc.gate), whose measurements become the Hub's ``model-index``.

    ``source_commit`` is the commit the download resolved the source's revision to (its manifest),
    so the card pins what was converted even when the config said ``@main``.
    """
    from .gate import card_section, model_index

    index = model_index(settings["model_id"], evaluation, gate_verdict) if evaluation else None
    front = yaml.safe_dump(_front_matter(settings, source_metadata, index), allow_unicode=True, sort_keys=False)
    template = chat_config["conv_template"]
    build_settings = {
        **{key: settings[key] for key in sorted(settings)},
        "source_commit": source_commit,
        "context_window_size": chat_config["context_window_size"],
        "prefill_chunk_size": chat_config["prefill_chunk_size"],
        "ffn_out_dtype": chat_config["model_config"]["ffn_out_dtype"],
        "model_lib": model_lib,
        "estimated_vram_bytes": estimated_vram,
        "hf2mlc": chat_config["hf2mlc"],
    }
    parts = [
        f"---\n{front}---\n",
        f"# {settings['model_id']}\n",
        f"{settings['name']} converted to [MLC LLM](https://llm.mlc.ai) format for **{settings['device']}**, "
        f"quantization `{settings['quantization']}` (codes and scales by `{settings['method']}`), "
        f"from {_origin(settings['source'], source_commit)}.\n",
        "Built by hf2mlc — a Snakemake workflow on apache-tvm from PyPI — with MLC LLM's "
        "formats as the contract: `tensor-cache.json` + `params_shard_*.bin` weights, `mlc-chat-config.json`, "
        "the tokenizer files, and a model library compiled for the device (`lib/`). The commit that added these "
        "files is tagged with the bundle's version id (a digest of its files).\n",
        "## Prompt format\n",
        "The conversation template in `mlc-chat-config.json` (validated against the model's own tokenizer):\n",
        "```json\n" + json.dumps(template, indent=2, ensure_ascii=False) + "\n```\n",
        *(["## Tokenizer\n", _tokenizer_section(tokenizer)] if tokenizer else []),
        "## Quality after quantization\n",
        (_quality_table(evaluation) if evaluation else "Not measured for this bundle.\n"),
        "## Quality gate\n",
        card_section(gate_verdict),
        "## Build settings\n",
        "The exact configuration this bundle was built from (the model's entry in `config/config.yaml` with its "
        "defaults applied, and the source commit), so that hf2mlc rebuilds the same files:\n",
        "```json\n" + json.dumps(build_settings, indent=2, ensure_ascii=False, sort_keys=True) + "\n```\n",
        "Libraries: " + ", ".join(f"`lib/{name}`" for name in lib_files) + ". The objects reference `TVMFFI*` "
        "symbols: link them with a TVM runtime of the version named above.\n",
        "## Use\n",
        "iPhone: add the `bundle/` folder and `lib/libmodel_iphone.a` to MLC LLM's iOS app, with the entry "
        "from `bundle/mlc-app-config.json`. Mac: `mlc_llm chat <this repo> --model-lib lib/<library>.dylib`.\n",
    ]
    return "\n".join(parts)
