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

``arrays/`` also holds the token rows themselves (inputs, targets, row offsets), so every build
is fed exactly what the reference saw; ``reference.json`` records the text's and the model's digests.
The reference's greedy answers to the chat prompts under each template (``answers.json``) are a second,
smaller artefact (rule ``reference_answers``), so that a template edit does not recompute the text's.
"""

from __future__ import annotations

import logging
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
#: Directory of the per-position arrays, one ``<name>.npy`` each (``np.save`` writes the same bytes for the
#: same array, unlike ``np.savez``, whose zip entries carry the time of writing).
ARRAYS = "arrays"
ARRAY_NAMES = ("inputs", "targets", "offsets", "top_ids", "top_logits", "lse", "target_logit")
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


def build_reference(model_dir: Path, out_dir: Path, text: EvaluationText, *, model_digest: str) -> dict[str, Any]:
    """Write arrays/ and reference.json for ``text`` into ``out_dir``; return the summary."""
    from .model.gpt_neox.config import GPTNeoXConfig
    from .reference import stream_logit_blocks

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
    logger.info("reference: %d tokens of %s in %d rows", n, text.name, len(text.rows))
    for start, block in stream_logit_blocks(model_dir, [i for i, _ in text.rows]):
        stop = start + block.shape[0]
        top_ids[start:stop], top_logits[start:stop] = top_k(block, k)
        lse[start:stop] = log_sum_exp(block)
        target_logit[start:stop] = block[np.arange(block.shape[0]), targets[start:stop]]
    arrays = {"inputs": inputs, "targets": targets, "offsets": offsets, "top_ids": top_ids,
              "top_logits": top_logits, "lse": lse, "target_logit": target_logit}
    (out_dir / ARRAYS).mkdir()
    for name in ARRAY_NAMES:
        np.save(out_dir / ARRAYS / f"{name}.npy", arrays[name], allow_pickle=False)
    nll = lse - target_logit.astype(np.float64)
    tail = np.clip(1.0 - np.exp(top_logits.astype(np.float64) - lse[:, None]).sum(axis=-1), 0.0, 1.0)
    summary = {
        "model": {"digest": model_digest, "vocab_size": config.vocab_size},
        "text": {
            "name": text.name, "description": text.description, "sha256": text.sha256,
            "tokens_sha256": text.tokens_sha256(), "rows": len(text.rows), "tokens": n,
        },
        "top_k": k,
        "perplexity": float(np.exp(nll.mean())),
        "tail_mass": {"mean": float(tail.mean()), "p99": float(np.quantile(tail, 0.99)), "max": float(tail.max())},
    }
    write_json(out_dir / SUMMARY, summary)
    return summary


def build_answers(model_dir: Path, out_dir: Path, prompts: list[dict[str, Any]], *, answer_tokens: int) -> list[dict[str, Any]]:
    """Write answers.json: the reference's greedy answers to ``prompts`` (:func:`chat_prompts`' items).

    Its own artefact, apart from the per-position arrays: a template edit re-answers a few prompts
    instead of recomputing the reference on the whole text.
    """
    from .reference import greedy_generate

    decode = load_tokenizer(model_dir).decode
    ids = greedy_generate(
        model_dir, [p["prompt_ids"] for p in prompts], max_new_tokens=answer_tokens,
        stop_token_ids=[p["stop_token_ids"] for p in prompts],
    )
    answers = [{**p, "answer_ids": a, "answer": answer_text(a, p, decode), "answer_tokens": answer_tokens}
               for p, a in zip(prompts, ids)]
    write_json(out_dir / ANSWERS, answers)
    return answers


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


def read_reference(ref_dir: Path, answers_dir: Path) -> Reference:
    import json

    ref_dir, answers_dir = Path(ref_dir), Path(answers_dir)
    paths = [ref_dir / SUMMARY, answers_dir / ANSWERS, *(ref_dir / ARRAYS / f"{n}.npy" for n in ARRAY_NAMES)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{ref_dir}: not a complete reference ({', '.join(missing)} missing); run rule reference again.")
    return Reference(
        summary=json.loads((ref_dir / SUMMARY).read_text(encoding="utf-8")),
        answers=json.loads((answers_dir / ANSWERS).read_text(encoding="utf-8")),
        **{name: np.load(ref_dir / ARRAYS / f"{name}.npy", allow_pickle=False) for name in ARRAY_NAMES},
    )
