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
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import UserError
from .model.config import GPTNeoXConfig

DATA = Path(__file__).with_name("data")
#: Decode steps compared by the build check (after a prefill of the rest of the prompt).
CHECK_DECODE_STEPS = 4
CHECK_TOKENS = 40


# ---------------------------------------------------------------- text and tokens


def load_encoder(model_dir: Path) -> Callable[[str], list[int]]:
    """The model's tokenizer as its bundle tokenizes (hf2mlc.tokenizer.bundle: SentencePiece, else tokenizer.json)."""
    from .tokenizer.bundle import model_tokenizer

    return model_tokenizer(model_dir).encode


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


def evaluate_build(
    model_dir: Path, weights_dir: Path, lib_path: Path, quantization: str, out_dir: Path, *, max_tokens: int = 1024
) -> dict[str, Any]:
    """Perplexity / agreement / KL of the host build vs the original checkpoint; writes report.json + report.md."""
    from .runtime import Engine

    engine = Engine(lib_path, weights_dir)
    info, docs = document_rows(model_dir, max_tokens=max_tokens, max_len=engine.context_window_size)
    ours = []
    for inputs, _ in docs:
        engine.reset()
        ours.append(engine.logits_all(inputs))
    del engine
    gc.collect()
    model = original_reference(model_dir)
    refs = [transformers_logits(model, inputs) for inputs, _ in docs]
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
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(_markdown(report), encoding="utf-8")
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
