"""What quantization cost: perplexity, top-1 agreement and KL divergence of a host build against the
original checkpoint in float32 (transformers, the independent reference), on held-out text.

Whether the compiled model is *right* is a different question, answered by :mod:`hf2mlc.check` on the
same text (:func:`document_rows`).
"""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import UserError
from .layout import EVALUATION_MARKDOWN, EVALUATION_REPORT
from .model.gpt_neox.config import GPTNeoXConfig

DATA = Path(__file__).with_name("data")
#: The texts a model can be checked and evaluated on (config/config.yaml: ``evaluation_text``):
#: the project's bundled Japanese sample, or the demo's own held-out chats (a file of its checkpoint).
EVALUATION_TEXTS = ("eval_ja", "demo_heldout")


# ---------------------------------------------------------------- text and tokens


def load_encoder(model_dir: Path) -> Callable[[str], list[int]]:
    """The model's own tokenizer: SentencePiece's ``spiece.model``/``tokenizer.model``, else tokenizer.json."""
    for name in ("spiece.model", "tokenizer.model"):
        if (model_dir / name).is_file():
            import sentencepiece as spm

            processor = spm.SentencePieceProcessor(model_file=str(model_dir / name))
            return lambda text: list(processor.encode(text))
    if (model_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        return lambda text: tokenizer.encode(text, add_special_tokens=False).ids
    raise UserError(f"{model_dir}: no spiece.model, tokenizer.model or tokenizer.json to tokenize the evaluation text with.")


def document_rows(
    model_dir: Path, text: str, *, max_tokens: int, max_len: int
) -> tuple[dict[str, str], list[tuple[list[int], list[int]]]]:
    """Held-out ``text`` (one of :data:`EVALUATION_TEXTS`) as (inputs, targets) rows — ``targets[t]`` is
    the token to predict after ``inputs[:t+1]`` — until ``max_tokens`` targets are collected; rows are cut
    to ``max_len``.

    ``demo_heldout``, the demo's own ``heldout.txt``, is scored as its chats look to MLC's engine (the prompt encoded with
    nothing in front, ``</s>`` after each answer: :func:`hf2mlc.demo.chat_example`), the definition of its
    model card's perplexity. ``eval_ja``, the project's Japanese sample, is scored as plain documents: the
    text encoded with nothing in front, each token predicting the next, ``</s>`` after the last.
    """
    if text not in EVALUATION_TEXTS:
        raise UserError(f"evaluation_text {text!r} is not known; use one of {', '.join(EVALUATION_TEXTS)} (config/config.yaml).")
    config = GPTNeoXConfig.from_file(model_dir)
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    if eos is None:
        raise UserError(f"{model_dir}/config.json: eos_token_id is not set; the evaluation ends documents with it.")
    encode = load_encoder(model_dir)
    heldout = model_dir / "heldout.txt"
    if text == "demo_heldout":
        if not heldout.is_file():
            raise UserError(f"{heldout}: missing; evaluation_text demo_heldout is the demo's own held-out text.")
        from .demo import chat_example
        from .demo_corpus import read_dialogues

        info = {"name": "heldout.txt", "description": "the demo's held-out chats, as the engine renders them"}
        rows = [chat_example(encode, doc) for doc in read_dialogues(heldout)]
    else:
        text = (DATA / "eval_ja.txt").read_text(encoding="utf-8")
        info = {"name": "eval_ja.txt", "description": "hf2mlc's Japanese chat and prose sample"}
        rows = []
        for doc in (d.strip("\n") for d in text.split("\n\n") if d.strip()):
            ids = encode(doc)
            rows.append((ids, ids[1:] + [eos]))
    out: list[tuple[list[int], list[int]]] = []
    total = 0
    for inputs, targets in rows:
        inputs, targets = inputs[:max_len], targets[:max_len]
        if not inputs:
            continue
        out.append((inputs, targets))
        total += len(targets)
        if total >= max_tokens:
            break
    return info, out


# ---------------------------------------------------------------- the measurement


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def evaluate_build(
    model_dir: Path,
    weights_dir: Path,
    lib_path: Path,
    quantization: str,
    out_dir: Path,
    *,
    evaluation_text: str,
    max_tokens: int = 1024,
) -> dict[str, Any]:
    """Perplexity / agreement / KL of the host build vs the original checkpoint; writes report.json + report.md."""
    from .check import original_reference, transformers_logits
    from .progress import progress
    from .runtime import Engine

    engine = Engine(lib_path, weights_dir)
    info, docs = document_rows(model_dir, evaluation_text, max_tokens=max_tokens, max_len=engine.context_window_size)
    ours = []
    for inputs, _ in progress(docs, desc=f"evaluate {quantization}: host library", unit="doc"):
        engine.reset()
        ours.append(engine.logits_all(inputs))
    del engine
    gc.collect()
    model = original_reference(model_dir)
    refs = [
        transformers_logits(model, inputs)
        for inputs, _ in progress(docs, desc=f"evaluate {quantization}: transformers float32", unit="doc")
    ]
    del model
    gc.collect()
    targets = np.concatenate([np.asarray(t) for _, t in docs])
    lp_ours = _log_softmax(np.concatenate(ours))
    lp_ref = _log_softmax(np.concatenate(refs))
    rows = np.arange(len(targets))
    nll_ours = -lp_ours[rows, targets]
    nll_ref = -lp_ref[rows, targets]
    kl = (np.exp(lp_ref) * (lp_ref - lp_ours)).sum(axis=-1)
    report = {
        "quantization": quantization,
        "text": {**info, "documents": len(docs), "tokens": int(len(targets))},
        "reference": {"name": "transformers float32", "perplexity": float(math.exp(nll_ref.mean()))},
        "build": {"name": f"hf2mlc {quantization} (host build)", "perplexity": float(math.exp(nll_ours.mean()))},
        "top1_agreement": float(np.mean(lp_ours.argmax(-1) == lp_ref.argmax(-1))),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
    }
    report["delta_perplexity"] = report["build"]["perplexity"] - report["reference"]["perplexity"]
    report = json.loads(json.dumps(report), parse_float=lambda s: round(float(s), 6))
    out_dir = Path(out_dir)
    (out_dir / EVALUATION_REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out_dir / EVALUATION_MARKDOWN).write_text(_markdown(report), encoding="utf-8")
    return report


def _markdown(report: dict[str, Any]) -> str:
    ref, build = report["reference"], report["build"]
    return (
        f"# Quality of the {report['quantization']} build\n\n"
        f"{report['text']['tokens']} tokens in {report['text']['documents']} documents of {report['text']['name']} "
        f"({report['text']['description']}).\n\n"
        "| model | perplexity | Δ perplexity | top-1 agreement | mean KL | max KL |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: |\n"
        f"| {ref['name']} | {ref['perplexity']:.4f} | – | – | – | – |\n"
        f"| {build['name']} | {build['perplexity']:.4f} | {report['delta_perplexity']:+.4f} | "
        f"{report['top1_agreement']:.2%} | {report['kl_mean']:.5f} | {report['kl_max']:.5f} |\n"
    )
