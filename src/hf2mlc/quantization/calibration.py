"""Calibration statistics per linear, and the per-layer plan that turns them into calibrated tensors.

What a calibrated method needs of each linear's input ``x`` [tokens, K] is small: ``Σ x²`` per channel
(AWQ and the scale search) and, for GPTQ, ``XᵀX``.  At LINE's 3.6B the Hessians of all 30 layers
would not fit in memory (0.7 GB per layer, 4h_to_h's 12288² alone 0.6 GB), while the inputs
themselves are small for a few thousand calibration tokens; so for GPTQ the inputs are spooled to a
scratch directory as they are observed, and each Hessian is formed only when its layer is converted,
then dropped.  The observation order does not matter: a forward pass may be run per calibration
sequence.

:func:`plan_layer` applies AWQ's channel scaling to one layer's Hugging Face tensors, folding the
inverse factors exactly into what produces each linear's input, so the model computes the same
function in float arithmetic:

* ``attention.query_key_value`` and ``mlp.dense_h_to_4h`` read a LayerNorm's output
  (``input_layernorm`` / ``post_attention_layernorm``, in both the sequential and the parallel
  residual graph of GPT-NeoX): ``W·diag(s)`` and LayerNorm weight and bias divided by ``s``;
* ``attention.dense`` reads softmax(QKᵀ)·V per head, linear in V: the value rows (weight and bias) of
  ``query_key_value`` are divided by ``s``;
* ``embed_out`` reads ``final_layer_norm``: folded there (MLC stores ``embed_out`` separately even
  for tied embeddings, so ``embed_in`` is untouched);
* ``mlp.dense_4h_to_h`` reads GELU's output, which no factor passes through exactly: not scaled.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..model.gpt_neox.config import GPTNeoXConfig
from ..reference import HEAD_NAME as HEAD
from ..reference import LINEARS as LAYER_LINEARS
from . import DEFAULT_CALIBRATION_TEXT, DEFAULT_CALIBRATION_TOKENS, Method, Quantization
from .calibrated import awq_scales, decode, encode_embedding, encode_linear, gptq, search_scales, weighted_error

#: GPTQ compensates within runs of at most this many input columns: exact for every linear of a model
#: with hidden and intermediate sizes up to 4096; at LINE's 3.6B only dense_4h_to_h (12288 inputs) is
#: split, into 3 runs, which cuts its factorisation cost ~9x (it grows as K³).
GPTQ_MAX_COLUMNS = 4096
#: Longest calibration sequence (each document is cut into windows of at most this many tokens).
SEGMENT_TOKENS = 512


@dataclass
class CalibrationText:
    """The token sequences calibration runs on, and where they came from (recorded in the manifest)."""

    name: str
    sha256: str
    segments: list[np.ndarray] = field(repr=False)

    @property
    def tokens(self) -> int:
        return int(sum(s.size for s in self.segments))

    def record(self) -> dict[str, object]:
        return {"text": self.name, "sha256": self.sha256, "tokens": self.tokens, "segments": len(self.segments)}


def _documents(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: the calibration text is not UTF-8 ({err}).") from err
    return [d.strip("\n") for d in text.split("\n\n") if d.strip()]


def load_calibration_text(
    model_dir: Path,
    spec: str | Path = DEFAULT_CALIBRATION_TEXT,
    *,
    max_tokens: int = DEFAULT_CALIBRATION_TOKENS,
    evaluation_text: str | None = None,
    base_dir: Path = Path("."),
) -> CalibrationText:
    """Token windows of the calibration text (a bundled set by name, or a file; documents split by blank lines).

    ``evaluation_text`` (the same kind of setting) must be disjoint from it: no document in both, else
    the evaluation would score text the quantizer was tuned on.
    """
    from ..evaluation_text import DATA, bundled_file, load_tokenizer, names_a_file, resolve_text_file

    spec = str(spec)
    if max_tokens < 1:
        raise UserError(f"calibration tokens must be at least 1, got {max_tokens}.")
    if not names_a_file(spec) and bundled_file(spec) is None:
        known = ", ".join(sorted(p.stem for p in DATA.glob("*.txt")))
        raise UserError(f"calibration text {spec!r} is not a bundled text ({known}) nor a file path; set the calibration text in config/config.yaml.")
    if names_a_file(spec) and not (Path(spec) if Path(spec).is_absolute() else Path(base_dir) / spec).is_file():
        raise UserError(f"{spec}: the calibration text file does not exist; set the calibration text in config/config.yaml.")
    path = resolve_text_file(spec, Path(model_dir), base_dir=base_dir)
    documents = _documents(path)
    if evaluation_text is not None:
        shared = set(documents) & set(_documents(resolve_text_file(evaluation_text, Path(model_dir), base_dir=base_dir)))
        if shared:
            raise UserError(
                f"{path}: {len(shared)} document(s) of the calibration text are also in the evaluation text "
                f"{evaluation_text!r}; calibrate on text the evaluation does not score (set the calibration text "
                "in config/config.yaml)."
            )
    config = GPTNeoXConfig.from_file(Path(model_dir))
    window = min(SEGMENT_TOKENS, config.max_position_embeddings)
    encode = load_tokenizer(Path(model_dir)).encode
    segments: list[np.ndarray] = []
    left = max_tokens
    for doc in documents:
        ids = encode(doc)
        for start in range(0, len(ids), window):
            if left <= 0:
                break
            piece = np.asarray(ids[start:start + min(window, left)], np.int64)
            segments.append(piece)
            left -= piece.size
    if not segments:
        raise UserError(f"{path}: the calibration text has no tokens.")
    return CalibrationText(spec if path.parent.name == "data" else path.name, hashlib.sha256(path.read_bytes()).hexdigest(), segments)


def collect_statistics(model_dir: Path, text: CalibrationText, *, hessians: bool, progress: bool = True) -> CalibrationStats:
    """One streaming float32 forward pass over the calibration windows (:mod:`hf2mlc.reference`),
    observing every linear's input, one layer's weights in memory at a time.

    The head's input is the final-layer-normed residual stream, so the pass stops there: the logits
    (a [tokens, vocab] product as large as a layer's work at 3.6B) are not needed.
    """
    import sys

    from tqdm import tqdm

    from ..reference import HEAD_LAYER, CheckpointWeights, final_hidden_states

    config = GPTNeoXConfig.from_file(Path(model_dir))
    stats = CalibrationStats(hessians=hessians)
    bar = tqdm(total=config.num_hidden_layers, unit="layer", desc=f"calibrate ({text.tokens} tokens)",
               file=sys.stderr, disable=not progress)

    def observe(layer: int, name: str, x: np.ndarray) -> None:
        stats.observe(layer, name, x)
        if name == LAYER_LINEARS[-1]:
            bar.update(1)

    start = time.perf_counter()
    weights = CheckpointWeights(Path(model_dir), config)
    try:
        hidden = final_hidden_states(config, weights, text.segments, observe=observe)
        stats.observe(HEAD_LAYER, HEAD, hidden)
        del hidden
        if hessians:
            stats.embedding_fisher = embedding_fisher(config, weights, text.segments)
    except BaseException:
        stats.close()
        raise
    finally:
        weights.close()
        bar.close()
    stats.seconds = time.perf_counter() - start
    return stats


def embedding_fisher(config: GPTNeoXConfig, weights, segments: list[np.ndarray]) -> np.ndarray:
    """``E[g gᵀ]`` [H, H] (float32) of the language-model loss gradient ``g`` at the embedding's output.

    The input embedding has no input activations to weigh its errors by (its rows are gathered), yet at
    3 bits it is the largest source of error when quantized plainly.  An error ``δ`` in a token's row
    raises the loss by about ``½ δᵀ F δ`` wherever the token occurs (Fisher's approximation of the
    Hessian), so GPTQ with ``F`` in place of ``XᵀX`` compensates each row's error across its channels.
    The gradient is streamed like the forward pass: the residual stream entering each layer is kept
    (tokens × hidden per layer), then each layer's forward is recomputed with autograd from the top down,
    one layer's weights in memory at a time.
    """
    import torch

    from ..reference import _layer, _param, _rotary_tables

    f = torch.nn.functional
    ids = np.concatenate([np.asarray(a, np.int64).reshape(-1) for a in segments])
    positions = np.concatenate([np.arange(len(a)) for a in segments])
    bounds = np.concatenate([[0], np.cumsum([len(a) for a in segments])])
    spans = [(int(bounds[i]), int(bounds[i + 1])) for i in range(len(segments))]
    # Next-token targets inside each segment; a segment's last position has none.
    targets = np.full(ids.size, -100, np.int64)
    for s0, s1 in spans:
        targets[s0:s1 - 1] = ids[s0 + 1:s1]
    cos, sin = _rotary_tables(config, torch.from_numpy(positions))
    inputs = []
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(weights("gpt_neox.embed_in.weight")[ids]))
        for layer in range(config.num_hidden_layers):
            inputs.append(x)
            x = _layer(config, weights, layer, x, cos, sin, spans, None, None)
    x = x.detach().requires_grad_(True)
    w, b = _param(weights, "gpt_neox.final_layer_norm")
    head = torch.from_numpy(weights("embed_out.weight"))
    loss = f.cross_entropy(f.layer_norm(x, (config.hidden_size,), w, b, config.layer_norm_eps) @ head.t(),
                           torch.from_numpy(targets), ignore_index=-100, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    del head, loss
    for layer in reversed(range(config.num_hidden_layers)):
        x = inputs.pop().requires_grad_(True)
        out = _layer(config, weights, layer, x, cos, sin, spans, None, None)
        (grad,) = torch.autograd.grad(out, x, grad)
        del out, x
    g = grad.numpy()
    return (g.T @ g / np.float32(max(1, int((targets >= 0).sum())))).astype(np.float32)


class CalibrationStats:
    """Accumulates what the calibrated methods need from ``observe(layer, linear_name, x)`` calls.

    ``hessians=True`` keeps every input (float32 ``.npy`` chunks under ``spool_dir``, a temporary
    directory by default) so that :meth:`hessian` can form ``XᵀX`` later; call :meth:`close` (or use
    as a context manager) to delete them.
    """

    def __init__(self, *, hessians: bool, spool_dir: Path | None = None) -> None:
        self.hessians = hessians
        self._sq: dict[tuple[int, str], np.ndarray] = {}
        self._count: dict[tuple[int, str], int] = {}
        self._chunks: dict[tuple[int, str], list[Path]] = {}
        self.seconds = 0.0  # of the forward pass that filled these statistics
        #: For GPTQ: the loss's Fisher at the embedding's output (:func:`embedding_fisher`), or None.
        self.embedding_fisher: np.ndarray | None = None
        self._own_spool = hessians and spool_dir is None
        self._spool = Path(tempfile.mkdtemp(prefix="hf2mlc-calib-")) if self._own_spool else spool_dir
        if hessians and self._spool is not None:
            self._spool.mkdir(parents=True, exist_ok=True)

    def observe(self, layer: int, name: str, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32).reshape(-1, np.shape(x)[-1])
        key = (int(layer), name)
        sq = np.einsum("tk,tk->k", x, x, dtype=np.float64)
        self._sq[key] = self._sq.get(key, 0) + sq
        self._count[key] = self._count.get(key, 0) + x.shape[0]
        if self.hessians:
            chunks = self._chunks.setdefault(key, [])
            path = self._spool / f"{layer}-{name}-{len(chunks)}.npy"
            np.save(path, x)
            chunks.append(path)

    def tokens(self, layer: int, name: str) -> int:
        return self._count.get((layer, name), 0)

    def importance(self, layer: int, name: str) -> np.ndarray:
        """Mean ``x²`` per input channel [K] (float64)."""
        key = (layer, name)
        if key not in self._sq:
            raise KeyError(f"no calibration activations were observed for layer {layer} {name}")
        return self._sq[key] / self._count[key]

    def hessian(self, layer: int, name: str) -> np.ndarray:
        """``XᵀX / T`` [K, K] (float32, as GPTQ uses it: 0.6 GB at K = 12288), from the spooled inputs."""
        if not self.hessians:
            raise ValueError("these statistics were collected without hessians=True")
        total: np.ndarray | None = None
        for path in self._chunks[(layer, name)]:
            x = np.load(path)
            if total is None:
                total = x.T @ x
            else:
                total += x.T @ x
        total /= np.float32(self._count[(layer, name)])
        return total

    def release(self, layer: int) -> None:
        """Delete the spooled inputs of ``layer`` (its Hessians have been used)."""
        for key in [k for k in self._chunks if k[0] == layer]:
            for path in self._chunks.pop(key):
                path.unlink(missing_ok=True)

    def close(self) -> None:
        for layer in {k[0] for k in self._chunks}:
            self.release(layer)
        if self._own_spool and self._spool is not None:
            shutil.rmtree(self._spool, ignore_errors=True)

    def __enter__(self) -> CalibrationStats:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class LinearPlan:
    """How to quantize one linear after folding: its input's statistics as the scaled linear sees them."""

    importance: np.ndarray  # mean x² per input channel, after x -> x / s
    hessian: np.ndarray | None  # XᵀX / T after x -> x / s (GPTQ only)


def value_rows(config: GPTNeoXConfig) -> np.ndarray:
    """Rows of Hugging Face's ``query_key_value`` [head, (q|k|v), head_dim] that produce dense's input j."""
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    j = np.arange(config.hidden_size)
    return (j // head_dim) * 3 * head_dim + 2 * head_dim + j % head_dim


def _fold_into(tensors: dict[str, np.ndarray], producer: str, s: np.ndarray, rows: np.ndarray | None = None) -> None:
    """Divide ``producer``'s output channels (its weight's rows, its bias) by ``s``."""
    for suffix in ("weight", "bias"):
        name = f"{producer}.{suffix}"
        array = tensors[name].astype(np.float32, copy=True)
        if rows is None:
            array /= s if array.ndim == 1 else s[:, None]
        else:
            array[rows] /= s if array.ndim == 1 else s[:, None]
        tensors[name] = array


def _scale_columns(tensors: dict[str, np.ndarray], linear: str, s: np.ndarray) -> None:
    name = f"{linear}.weight"
    tensors[name] = tensors[name].astype(np.float32) * s[None, :]


def _plan(importance: np.ndarray, hessian: np.ndarray | None, s: np.ndarray | None) -> LinearPlan:
    if s is None:
        return LinearPlan(importance, hessian)
    inv = 1.0 / s.astype(np.float64)
    if hessian is not None:  # in place: the Hessian is the largest array of a layer
        hessian *= inv.astype(np.float32)[:, None]
        hessian *= inv.astype(np.float32)[None, :]
    return LinearPlan(importance * inv * inv, hessian)


def plan_layer(
    tensors: dict[str, np.ndarray],
    layer: int,
    stats: CalibrationStats,
    config: GPTNeoXConfig,
    method: Method,
    q: Quantization,
) -> tuple[dict[str, np.ndarray], dict[str, LinearPlan]]:
    """Fold AWQ scaling into one layer's tensors (Hugging Face names and layout, not reordered).

    ``layer`` -1 is the head: ``tensors`` then holds ``gpt_neox.final_layer_norm.*`` and
    ``embed_out.weight``.  Returns the (possibly rescaled) tensors and, per linear (full name without
    ``.weight``), the statistics its quantizer should weight errors with.
    """
    out = dict(tensors)
    plans: dict[str, LinearPlan] = {}
    if layer < 0:
        groups = [("gpt_neox.final_layer_norm", HEAD, None)]
    else:
        p = f"gpt_neox.layers.{layer}"
        # dense first: scaling the value rows changes query_key_value's weight, whose own factors follow.
        groups = [
            (f"{p}.attention.query_key_value", f"{p}.attention.dense", value_rows(config)),
            (f"{p}.input_layernorm", f"{p}.attention.query_key_value", None),
            (f"{p}.post_attention_layernorm", f"{p}.mlp.dense_h_to_4h", None),
            (None, f"{p}.mlp.dense_4h_to_h", None),
        ]
    for producer, linear, rows in groups:
        short = HEAD if layer < 0 else linear.split(".", 3)[3]
        importance = stats.importance(layer, short)
        hessian = stats.hessian(layer, short) if method.gptq else None
        s = None
        if method.awq and producer is not None:
            s = awq_scales([out[f"{linear}.weight"]], importance, q)
            _fold_into(out, producer, s, rows)
            _scale_columns(out, linear, s)
        plans[linear] = _plan(importance, hessian, s)
    return out, plans


def embedding_plan(stats: CalibrationStats) -> LinearPlan | None:
    """The input embedding's plan: GPTQ with the loss's Fisher (:func:`embedding_fisher`) when the
    statistics hold it, else None (the scale search, every element weighted the same)."""
    fisher = stats.embedding_fisher
    return None if fisher is None else LinearPlan(np.diagonal(fisher).astype(np.float64), fisher)


def quantize_planned(
    weight: np.ndarray, plan: LinearPlan | None, method: Method, q: Quantization, *, embedding: bool = False
) -> tuple[np.ndarray, np.ndarray, float]:
    """One calibrated tensor: ``(q_weight, q_scale)`` in the format's layout, and its relative error.

    The error is ``Σ d (w - ŵ)² / Σ d w²`` with ``d`` the mean squared input per channel (for the
    embedding: uniform, or the Fisher's diagonal), ``ŵ`` what the decoder will produce; AWQ's factors
    cancel out of it, so it reads as the share of the linear's output energy lost (for uncorrelated
    inputs), comparable across methods.
    """
    weight = np.asarray(weight, np.float32)
    importance = None if plan is None else plan.importance
    if plan is None:  # the input embedding without a Fisher: every element counts the same
        codes, scale = search_scales(weight, q)
    elif method.gptq:
        codes, scale = gptq(weight, plan.hessian, q, max_columns=GPTQ_MAX_COLUMNS)
    else:
        codes, scale = search_scales(weight, q, importance)
    total = weighted_error(weight, np.zeros((1, 1), np.float32), importance)
    error = weighted_error(weight, decode(codes, scale, q), importance) / total if total > 0 else 0.0
    q_weight, q_scale = encode_embedding(codes, scale, q) if embedding else encode_linear(codes, scale, q)
    return q_weight, q_scale, error
