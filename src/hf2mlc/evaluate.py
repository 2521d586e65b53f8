"""What a build computes, measured against transformers — the independent reference.

Two questions, two functions:

* :func:`check_host_build` — *is the compiled model right?*  The host library's logits for a prefill and a
  few decode steps against transformers in float32 on the **same numbers** the library holds (for a
  quantized build, the dequantized weights from its tensor cache).  A relative error above the bound
  fails the build, so a wrong library never reaches the iPhone stage.
* :func:`evaluate_build` — *what did quantization cost?*  Perplexity, top-1 agreement and KL divergence of
  the host build against the original checkpoint in float32, on held-out text.
"""

from __future__ import annotations

import gc
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import UserError
from .model.config import GPTNeoXConfig

log = logging.getLogger(__name__)

DATA = Path(__file__).with_name("data")
#: Decode steps compared by the build check (after a prefill of the rest of the prompt).
CHECK_DECODE_STEPS = 4
CHECK_TOKENS = 40


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


def document_rows(model_dir: Path, *, max_tokens: int, max_len: int) -> tuple[dict[str, str], list[tuple[list[int], list[int]]]]:
    """Held-out text as (inputs, targets) rows — ``targets[t]`` is the token to predict after ``inputs[:t+1]`` —
    until ``max_tokens`` targets are collected; rows are cut to ``max_len``.

    The demo's own ``heldout.txt`` is scored as its chats look to MLC's engine (the prompt encoded with
    nothing in front, ``</s>`` after each answer: :func:`hf2mlc.demo.chat_example`), the definition of its
    model card's perplexity. Other models get the project's Japanese sample as plain documents: the text
    encoded with nothing in front, each token predicting the next, ``</s>`` after the last.
    """
    config = GPTNeoXConfig.from_file(model_dir)
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    if eos is None:
        raise UserError(f"{model_dir}/config.json: eos_token_id is not set; the evaluation ends documents with it.")
    encode = load_encoder(model_dir)
    heldout = model_dir / "heldout.txt"
    if heldout.is_file():
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


# ---------------------------------------------------------------- the transformers reference


def _torch():
    import torch

    return torch


def original_reference(model_dir: Path):
    """The checkpoint as transformers loads it, in float32 (the gold standard)."""
    torch = _torch()
    from transformers import GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    return model.eval()


def dequantized_reference(model_dir: Path, weights_dir: Path, quantization: str):
    """transformers' GPT-NeoX holding exactly the numbers of a tensor cache (dequantized, qkv order undone).

    This separates "the compiled model is right" from "quantization lost accuracy": against this reference
    a correct build of any quantization agrees to float16 rounding. Tensors are copied in one at a time
    into the loaded float32 model, so memory stays at the model plus one tensor.
    """
    torch = _torch()

    from .loader.huggingface import reorder_qkv
    from .quantization import get_quantization
    from .quantization.group import dequantize
    from .tensor_cache import read_tensor_cache

    q = get_quantization(quantization)
    config = GPTNeoXConfig.from_file(model_dir)
    model = original_reference(model_dir)
    output = model.get_output_embeddings()
    if output.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr():
        # Tied in transformers, separate in MLC's layout: give the output projection its own tensor.
        output.weight = torch.nn.Parameter(output.weight.detach().clone())
    params = dict(model.named_parameters())
    out_name = next(name for name, p in params.items() if p is output.weight)
    cache = read_tensor_cache(weights_dir)
    for name, array in cache.items():
        if name.endswith(".q_scale"):
            continue
        if name.endswith(".q_weight"):
            base = name[: -len(".q_weight")]
            scale = cache[f"{base}.q_scale"]
            in_features = config.intermediate_size if base.endswith("dense_4h_to_h") else config.hidden_size
            if q.linear_weight_layout == "KN" and base != "gpt_neox.embed_in":
                array, scale = array.T, scale.T
            array, name = dequantize(array, scale, q, axis=-1, size=in_features), f"{base}.weight"
        array = np.asarray(array, dtype=np.float32)
        if ".attention.query_key_value." in name:
            array = _undo_qkv(array, config.num_attention_heads, reorder_qkv)
        target = params[out_name if name == "embed_out.weight" else name]
        if tuple(target.shape) != array.shape:
            raise RuntimeError(f"{name}: cache shape {array.shape} does not match transformers' {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.ascontiguousarray(array)))
    return model


def _undo_qkv(array: np.ndarray, heads: int, reorder) -> np.ndarray:
    """Inverse of MLC's [head, (q|k|v)] → [(q|k|v), head] row reorder."""
    rows = array.shape[0]
    head_dim = rows // (3 * heads)
    rest = array.shape[1:]
    out = array.reshape(3, heads, head_dim, *rest).swapaxes(0, 1)
    undone = np.ascontiguousarray(out).reshape(array.shape)
    assert np.array_equal(reorder(undone, heads), array)
    return undone


def transformers_logits(model, ids: list[int]) -> np.ndarray:
    torch = _torch()
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float().numpy()


# ---------------------------------------------------------------- the two measurements


def _rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def check_host_build(
    model_dir: Path, weights_dir: Path, lib_path: Path, quantization: str, *, max_rel_error: float
) -> dict[str, Any]:
    """Prefill + decode logits of the host library against the transformers reference; fail above the bound."""
    from .quantization import get_quantization
    from .runtime import Engine

    _, rows = document_rows(model_dir, max_tokens=CHECK_TOKENS, max_len=CHECK_TOKENS)
    ids = rows[0][0]
    if len(ids) <= CHECK_DECODE_STEPS + 1:
        raise UserError(f"{model_dir}: the evaluation text is too short for the build check.")
    split = len(ids) - CHECK_DECODE_STEPS
    engine = Engine(lib_path, weights_dir)
    logits = [engine.prefill(ids[:split])]
    for token in ids[split:-1]:
        logits.append(engine.decode(token))
    ours = np.stack(logits)
    del engine
    gc.collect()
    quantized = get_quantization(quantization).kind != "no-quant"
    model = dequantized_reference(model_dir, weights_dir, quantization) if quantized else original_reference(model_dir)
    ref = transformers_logits(model, ids[:-1])[split - 1 :]
    del model
    gc.collect()
    per_position = [_rel_error(a, b) for a, b in zip(ours, ref)]
    worst = max(per_position)
    report = {
        "quantization": quantization,
        "reference": "transformers float32, " + ("dequantized weights from the tensor cache" if quantized else "the checkpoint's weights"),
        "tokens": len(ids) - 1,
        "compared": "prefill of %d tokens, then %d decode steps" % (split, len(per_position) - 1),
        "rel_error_per_position": [round(e, 8) for e in per_position],
        "max_rel_error": round(worst, 8),
        "bound": max_rel_error,
        "argmax_agreement": float(np.mean(ours.argmax(-1) == ref.argmax(-1))),
        "passed": worst <= max_rel_error,
    }
    if not report["passed"]:
        raise UserError(
            f"{lib_path.name}: the host build's logits differ from transformers by {worst:.3g} (relative), above "
            f"max_logit_rel_error {max_rel_error} (config/config.yaml). The compiled model is wrong for this "
            "checkpoint; nothing downstream (the iPhone build) will be made from it."
        )
    return report


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------- statistics

#: Tokens per block of the batch-means standard error (neighbouring tokens' losses are correlated).
CI_BLOCK_TOKENS = 64
#: Rows of build logits turned into log-probabilities at once ([rows, vocab] float64: 105 MB at 51,200).
KL_ROWS = 256


#: Student's t 97.5 % quantiles where the expansion below is poor.
_T_975_SMALL = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764}


def _t_quantile_975(dof: int) -> float:
    """Student's t 97.5 % quantile (tabulated below 5, else the Cornish–Fisher expansion around the normal's: < 0.1 % off)."""
    if dof in _T_975_SMALL:
        return _T_975_SMALL[dof]
    z = 1.959963984540054
    return (
        z
        + (z**3 + z) / (4 * dof)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3)
    )


def mean_interval(values: np.ndarray, *, block: int = CI_BLOCK_TOKENS) -> dict[str, float]:
    """Mean and 95 % interval of per-token values by batch means: the standard error of the means of
    consecutive ``block``-token blocks (Student's t over the blocks), which unlike the per-token
    standard error does not pretend neighbouring tokens are independent."""
    values = np.asarray(values, dtype=np.float64)
    blocks = max(2, len(values) // block)
    means = np.array([chunk.mean() for chunk in np.array_split(values, blocks)])
    mean = float(values.mean())
    half = _t_quantile_975(blocks - 1) * float(means.std(ddof=1)) / math.sqrt(blocks)
    return {"mean": mean, "low": mean - half, "high": mean + half, "blocks": blocks}


def kl_bounds(
    logq: np.ndarray, top_ids: np.ndarray, top_logits: np.ndarray, lse: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, tail mass) of KL(reference ‖ build) per position from the stored top-k reference.

    ``logq`` [n, vocab] is the build's full log-distribution.  Over the reference's top-k the KL terms
    are exact.  The reference's remaining mass ``T_p`` is spread over the other tokens in an unknown way,
    each at most the k-th largest probability ``c``.  *Lower*: the tail as one outcome,
    ``T_p·log(T_p/T_q)`` (log-sum inequality; exact if the tails have the same shape).  *Upper*: the
    largest value any admissible tail can give, which (the term is convex in the tail) puts ``c`` on
    the tokens the build finds least likely first.
    """
    logp_top = top_logits.astype(np.float64) - lse[:, None]
    p_top = np.exp(logp_top)
    logq_top = np.take_along_axis(logq, top_ids.astype(np.int64), -1)
    kl_top = (p_top * (logp_top - logq_top)).sum(-1)
    tail_p = np.clip(1.0 - p_top.sum(-1), 0.0, 1.0)
    tail_q = np.clip(1.0 - np.exp(logq_top).sum(-1), 1e-300, 1.0)
    k, vocab = top_ids.shape[1], logq.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        lower = kl_top + np.where(tail_p > 0, tail_p * np.log(tail_p / tail_q), 0.0)
    if k >= vocab:
        return lower, lower.copy(), tail_p
    rest = logq.copy()
    np.put_along_axis(rest, top_ids.astype(np.int64), np.inf, -1)
    rest.sort(axis=-1)
    rest = rest[:, : vocab - k]  # the build's tail log-probabilities, least likely first
    cap = np.exp(logp_top[:, -1])
    full = np.minimum(np.floor(tail_p / cap).astype(np.int64), vocab - k - 1)
    partial = tail_p - full * cap
    cumulative = np.concatenate([np.zeros((len(rest), 1)), np.cumsum(rest, -1)], -1)
    rows = np.arange(len(rest))
    upper_tail = cap * (full * np.log(cap) - cumulative[rows, full])
    with np.errstate(divide="ignore", invalid="ignore"):
        upper_tail += np.where(partial > 0, partial * (np.log(partial) - rest[rows, full]), 0.0)
    return lower, kl_top + upper_tail, tail_p


# ---------------------------------------------------------------- the evaluation


def _build_scores(engine, reference) -> dict[str, np.ndarray]:
    """Per-position NLL, argmax and KL bounds of the build on the reference's rows."""
    parts: dict[str, list[np.ndarray]] = {"nll": [], "argmax": [], "kl_low": [], "kl_high": [], "tail": []}
    rows = reference.rows()
    for index, (row, start) in enumerate(zip(rows, reference.offsets[:-1])):
        engine.reset()
        logits = engine.logits_all(row.tolist())
        for a in range(0, len(row), KL_ROWS):
            b = min(len(row), a + KL_ROWS)
            g = slice(int(start) + a, int(start) + b)
            logq = _log_softmax(logits[a:b])
            parts["nll"].append(-logq[np.arange(b - a), reference.targets[g]])
            parts["argmax"].append(logits[a:b].argmax(-1))
            low, high, tail = kl_bounds(logq, reference.top_ids[g], reference.top_logits[g], reference.lse[g])
            parts["kl_low"].append(low)
            parts["kl_high"].append(high)
            parts["tail"].append(tail)
        if (index + 1) % 10 == 0 or index + 1 == len(rows):
            log.info("evaluate: %d/%d rows", index + 1, len(rows))
    return {key: np.concatenate(value) for key, value in parts.items()}


def _perplexity(interval: dict[str, float]) -> dict[str, float]:
    return {"value": math.exp(interval["mean"]), "ci95": [math.exp(interval["low"]), math.exp(interval["high"])]}


def _answers(engine, reference, decode) -> list[dict[str, Any]]:
    """The build's greedy answers to the reference's prompts, beside the reference's."""
    from .evaluation_text import answer_text

    out = []
    tokens = int(reference.summary["answer_tokens"])
    for item in reference.answers:
        ids = engine.generate(item["prompt_ids"], tokens, temperature=0.0, stop_token_ids=item["stop_token_ids"])
        out.append({
            "template": item["template"], "message": item["message"], "prompt": item["prompt"],
            "reference": item["answer"], "build": answer_text(ids, item, decode),
            "same_tokens": ids == item["answer_ids"],
        })
    return out


def evaluate_build(
    model_dir: Path, weights_dir: Path, lib_path: Path, quantization: str, reference_dir: Path, out_dir: Path
) -> dict[str, Any]:
    """Perplexity (with interval), KL, top-1 agreement and greedy answers of the host build against the
    stored float32 reference; writes report.json + report.md into ``out_dir``."""
    from .evaluation_text import load_tokenizer
    from .reference_cache import read_reference
    from .runtime import Engine

    reference = read_reference(reference_dir)
    engine = Engine(lib_path, weights_dir)
    longest = int(np.diff(reference.offsets).max())
    if longest > engine.context_window_size:
        raise UserError(
            f"{reference_dir}: the reference has rows of {longest} tokens, longer than {lib_path.name}'s context "
            f"window of {engine.context_window_size}; rebuild the reference with the host context_window_size."
        )
    scores = _build_scores(engine, reference)
    answers = _answers(engine, reference, load_tokenizer(Path(model_dir)).decode)
    del engine
    gc.collect()

    nll_ref = -reference.target_logprob
    ref_ppl = _perplexity(mean_interval(nll_ref))
    build_ppl = _perplexity(mean_interval(scores["nll"]))
    diff = mean_interval(scores["nll"] - nll_ref)  # paired: the same tokens, so far tighter than either alone
    kl = scores["kl_low"]
    text = reference.summary["text"]
    report: dict[str, Any] = {
        "quantization": quantization,
        "text": {"name": text["name"], "description": text["description"], "documents": text["rows"],
                 "tokens": text["tokens"], "sha256": text["sha256"]},
        "reference": {"name": "hf2mlc streaming float32 reference", "perplexity": ref_ppl["value"],
                      "perplexity_ci95": ref_ppl["ci95"], "model_digest": reference.summary["model"]["digest"]},
        "build": {"name": f"hf2mlc {quantization} (host build)", "perplexity": build_ppl["value"],
                  "perplexity_ci95": build_ppl["ci95"]},
        "delta_perplexity": build_ppl["value"] - ref_ppl["value"],
        "delta_perplexity_pct": 100 * math.expm1(diff["mean"]),
        "delta_perplexity_pct_ci95": [100 * math.expm1(diff["low"]), 100 * math.expm1(diff["high"])],
        "top1_agreement": float(np.mean(scores["argmax"] == reference.top_ids[:, 0])),
        "kl_mean": float(kl.mean()),
        "kl_p99": float(np.quantile(kl, 0.99)),
        "kl_max": float(kl.max()),
        "kl_mean_upper_bound": float(scores["kl_high"].mean()),
        "reference_tail_mass_mean": float(scores["tail"].mean()),
        "method": {
            "interval": f"95 % Student-t interval over {diff['blocks']} blocks of ~{CI_BLOCK_TOKENS} consecutive "
                        "tokens (batch means); Δ perplexity is paired per token",
            "kl": f"KL(reference ‖ build) in nats over the reference's top {reference.summary['top_k']} tokens, "
                  "the rest as one outcome: a lower bound of the exact KL (kl_mean_upper_bound bounds it above)",
        },
        "answers": answers,
    }
    report = json.loads(json.dumps(report), parse_float=lambda s: round(float(s), 6))
    out_dir = Path(out_dir)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(_markdown(report), encoding="utf-8")
    return report


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "⏎") or "(empty)"


def _markdown(report: dict[str, Any]) -> str:
    ref, build, text = report["reference"], report["build"], report["text"]
    lines = [
        f"# Quality of the {report['quantization']} build",
        "",
        f"{text['tokens']} tokens in {text['documents']} rows of {text['name']} ({text['description']}).",
        "",
        "| model | perplexity (95 % CI) | Δ perplexity (95 % CI) | top-1 agreement | mean KL | p99 KL |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| {ref['name']} | {ref['perplexity']:.4f} ({ref['perplexity_ci95'][0]:.4f}–{ref['perplexity_ci95'][1]:.4f}) "
        "| – | – | – | – |",
        f"| {build['name']} | {build['perplexity']:.4f} ({build['perplexity_ci95'][0]:.4f}–{build['perplexity_ci95'][1]:.4f}) "
        f"| {report['delta_perplexity_pct']:+.2f} % ({report['delta_perplexity_pct_ci95'][0]:+.2f} to "
        f"{report['delta_perplexity_pct_ci95'][1]:+.2f} %) | {report['top1_agreement']:.2%} | {report['kl_mean']:.5f} "
        f"| {report['kl_p99']:.5f} |",
        "",
        f"Intervals: {report['method']['interval']}. KL: {report['method']['kl']}; upper bound of the mean "
        f"{report['kl_mean_upper_bound']:.5f}, reference mass outside the stored tokens {report['reference_tail_mass_mean']:.2e}.",
        "",
        "## Greedy answers",
        "",
        "The same prompts under the model's family template and under `seed-compat` (the 2023 write-up's). "
        "Where the reference itself answers poorly under one template only, that template is wrong; where the "
        "build departs from the reference under the same template, quantization is.",
        "",
        "| template | prompt | reference | build | same tokens |",
        "| --- | --- | --- | --- | :---: |",
    ]
    for a in report["answers"]:
        lines.append(
            f"| {a['template']} | {_cell(a['message'])} | {_cell(a['reference'])} | {_cell(a['build'])} "
            f"| {'yes' if a['same_tokens'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"
