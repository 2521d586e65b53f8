"""The float32 reference of one model on one evaluation text, computed once and read by every evaluation.

Full reference log-probabilities of 10,000 tokens over LINE's 51,200-token vocabulary would be 2 GB in
float32 (1 GB in float16), per model, read by every quantization.  What the metrics need is smaller:

* perplexity needs the target token's log-probability (``target_logit - lse``);
* top-1 agreement needs the reference's argmax (``top_ids[:, 0]``);
* KL(reference ‖ build) needs the reference's distribution.  Stored are its :data:`TOP_K` largest logits
  with their ids and the log-sum-exp, so the top-k probabilities are exact and the rest of the
  reference's mass, the *tail* ``T_p = 1 − Σ top-k p``, is known in total but not per token.  The
  evaluation (which has the build's full distribution) computes KL exactly over the top-k and treats
  the tail as one outcome, ``T_p · log(T_p / T_q)``.  By the log-sum inequality that is a **lower bound**
  of the exact KL, equal to it when the tail is empty or the two tails have the same shape; the
  evaluation also reports the tail mass and an upper bound (see :func:`hf2mlc.evaluate.kl_bounds`).
  With ``TOP_K = 1024`` the file is 8 KB per token (80 MB for 10,000 tokens); for vocabularies of at most
  ``TOP_K`` tokens (the demo's) everything is stored and the KL is exact.

``reference.npz`` also holds the token rows themselves (inputs, targets, row offsets), so every build
is fed exactly what the reference saw; ``reference.json`` records the text's and the model's digests;
``answers.json`` holds the reference's greedy answers to the chat prompts under each template.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .evaluation_text import EvaluationText, answer_text, load_tokenizer
from .manifest import write_json

logger = logging.getLogger(__name__)

#: Reference logits kept per position (the largest ones, with their token ids).
TOP_K = 1024
ARRAYS = "reference.npz"
SUMMARY = "reference.json"
ANSWERS = "answers.json"


def log_sum_exp(logits: np.ndarray) -> np.ndarray:
    """Row-wise log Σ exp in float64."""
    x = logits.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True)))[:, 0]


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest logits per row, largest first, and their ids (ties: lower id first)."""
    if k >= logits.shape[-1]:
        ids = np.argsort(-logits, axis=-1, kind="stable")
    else:
        part = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
        part.sort(axis=-1)  # ids ascending, so the stable sort below breaks ties by id
        order = np.argsort(-np.take_along_axis(logits, part, -1), axis=-1, kind="stable")
        ids = np.take_along_axis(part, order, -1)
    return ids.astype(np.int32), np.take_along_axis(logits, ids, -1).astype(np.float32)


def build_reference(
    model_dir: Path,
    out_dir: Path,
    text: EvaluationText,
    prompts: list[dict[str, Any]],
    *,
    answer_tokens: int,
    model_digest: str,
) -> dict[str, Any]:
    """Write reference.npz / reference.json / answers.json for ``text`` into ``out_dir``; return the summary."""
    from .model.config import GPTNeoXConfig
    from .reference import greedy_generate, stream_logit_blocks

    config = GPTNeoXConfig.from_file(model_dir)
    k = min(TOP_K, config.vocab_size)
    inputs = np.concatenate([np.asarray(i, dtype=np.int32) for i, _ in text.rows])
    targets = np.concatenate([np.asarray(t, dtype=np.int32) for _, t in text.rows])
    offsets = np.concatenate([[0], np.cumsum([len(i) for i, _ in text.rows])]).astype(np.int64)
    n = int(targets.size)
    top_ids = np.empty((n, k), dtype=np.int32)
    top_logits = np.empty((n, k), dtype=np.float32)
    lse = np.empty(n, dtype=np.float64)
    target_logit = np.empty(n, dtype=np.float32)
    began = time.monotonic()
    logger.info("reference: %d tokens of %s in %d rows", n, text.name, len(text.rows))
    for start, block in stream_logit_blocks(model_dir, [i for i, _ in text.rows]):
        stop = start + block.shape[0]
        top_ids[start:stop], top_logits[start:stop] = top_k(block, k)
        lse[start:stop] = log_sum_exp(block)
        target_logit[start:stop] = block[np.arange(block.shape[0]), targets[start:stop]]
    seconds_logits = time.monotonic() - began
    np.savez(
        out_dir / ARRAYS,
        inputs=inputs, targets=targets, offsets=offsets,
        top_ids=top_ids, top_logits=top_logits, lse=lse, target_logit=target_logit,
    )
    nll = lse - target_logit.astype(np.float64)
    tail = np.clip(1.0 - np.exp(top_logits.astype(np.float64) - lse[:, None]).sum(axis=-1), 0.0, 1.0)

    began = time.monotonic()
    decode = load_tokenizer(model_dir).decode
    answers = greedy_generate(
        model_dir, [p["prompt_ids"] for p in prompts], max_new_tokens=answer_tokens,
        stop_token_ids=[p["stop_token_ids"] for p in prompts],
    ) if prompts else []
    write_json(out_dir / ANSWERS, [
        {**p, "answer_ids": ids, "answer": answer_text(ids, p, decode)} for p, ids in zip(prompts, answers)
    ])
    summary = {
        "model": {"digest": model_digest, "vocab_size": config.vocab_size},
        "text": {
            "name": text.name, "description": text.description, "sha256": text.sha256,
            "tokens_sha256": text.tokens_sha256(), "rows": len(text.rows), "tokens": n,
        },
        "top_k": k,
        "perplexity": float(np.exp(nll.mean())),
        "tail_mass": {"mean": float(tail.mean()), "p99": float(np.quantile(tail, 0.99)), "max": float(tail.max())},
        "answer_tokens": answer_tokens,
        "seconds": {"logits": round(seconds_logits, 3), "answers": round(time.monotonic() - began, 3)},
    }
    write_json(out_dir / SUMMARY, {key: value for key, value in summary.items() if key != "seconds"})
    return summary


@dataclass(frozen=True)
class Reference:
    """A stored reference, as the evaluation reads it."""

    summary: dict[str, Any]
    answers: list[dict[str, Any]]
    inputs: np.ndarray
    targets: np.ndarray
    offsets: np.ndarray
    top_ids: np.ndarray
    top_logits: np.ndarray
    lse: np.ndarray
    target_logit: np.ndarray

    def rows(self) -> list[np.ndarray]:
        return [self.inputs[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    @property
    def target_logprob(self) -> np.ndarray:
        return self.target_logit.astype(np.float64) - self.lse


def read_reference(ref_dir: Path) -> Reference:
    import json

    ref_dir = Path(ref_dir)
    if not (ref_dir / ARRAYS).is_file() or not (ref_dir / SUMMARY).is_file():
        raise UserError(f"{ref_dir}: not a reference directory ({ARRAYS}, {SUMMARY} missing); run rule reference.")
    arrays = np.load(ref_dir / ARRAYS)
    return Reference(
        summary=json.loads((ref_dir / SUMMARY).read_text(encoding="utf-8")),
        answers=json.loads((ref_dir / ANSWERS).read_text(encoding="utf-8")),
        **{name: arrays[name] for name in arrays.files},
    )
