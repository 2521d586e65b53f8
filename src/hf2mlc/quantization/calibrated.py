"""Calibrated group quantization: better codes and scales inside MLC's unchanged formats.

MLC's decoder only computes ``(q - max_int) * scale`` per group (in the model dtype), so any choice of
codes ``q`` in ``[0, 2**bits - 1]`` and of a float16 ``scale`` per group is a valid bundle for every MLC
runtime.  MLC's own quantizer uses ``scale = max|w| / max_int`` and codes ``[0, 2 * max_int]``: it
never uses the top code (``+8 * scale`` for int4, ``+4 * scale`` for int3) and never clips.  Here:

* :func:`search_scales` tries scales of both signs (a negative scale puts the extra level on the
  negative side) and below the no-clip bound, and keeps per group the one with the smallest
  reconstruction error weighted by the mean squared activation of each input channel;
* :func:`awq_scales` chooses per-input-channel factors ``s`` (AWQ) so that ``W * s`` quantizes
  with less activation-weighted error; the caller folds ``1 / s`` into what produces the input
  (a LayerNorm's weight and bias, or attention's value rows), which leaves the model's function
  unchanged;
* :func:`gptq` quantizes one input column at a time and spreads each column's error over the columns
  not yet quantized through the inverse Hessian ``(XᵀX)⁻¹`` (GPTQ), with group scales chosen by the
  search above when each group starts.

All functions take a Linear weight as float32 ``[N (out), K (in)]`` and return codes ``[N, K]``
(uint8) and scales ``[N, groups]`` in the model dtype; :func:`encode_linear` packs them into the
``q_weight``/``q_scale`` layout of the quantization.
"""

from __future__ import annotations

import concurrent.futures

import numpy as np

from . import Quantization
from .group import _worker_count, pack

#: Fractions of the no-clip scale tried per group (clipping a few outliers often lowers the error).
SEARCH_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
#: Exponents tried for AWQ's per-channel factors ``s = mean(x²)^(alpha / 2)``.
AWQ_ALPHAS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
#: Rows of each weight that judge AWQ's exponent.
_AWQ_SAMPLE_ROWS = 256
#: Rows per block in the vectorised searches (bounds the temporaries to a few MB).
_BLOCK_ELEMS = 1 << 18


def top_code(q: Quantization) -> int:
    """The largest code the format can hold (15 for int4): one level more than MLC's quantizer uses."""
    return (1 << q.bits) - 1


def _padded_groups(weight: np.ndarray, q: Quantization) -> np.ndarray:
    """``weight`` [N, K] float32 zero-padded to whole groups, viewed as [N, groups, group_size]."""
    n, k = weight.shape
    width = q.num_groups(k) * q.group_size
    w = np.zeros((n, width), np.float32)
    w[:, :k] = weight
    return w.reshape(n, -1, q.group_size)


def _padded_importance(importance: np.ndarray | None, k: int, q: Quantization) -> np.ndarray:
    """Per-input-channel weights [groups, group_size]; padding positions weigh nothing."""
    width = q.num_groups(k) * q.group_size
    d = np.zeros(width, np.float32)
    d[:k] = 1.0 if importance is None else np.asarray(importance, np.float32)
    return d.reshape(-1, q.group_size)


def decode(codes: np.ndarray, scale: np.ndarray, q: Quantization) -> np.ndarray:
    """What MLC's model computes from ``codes`` [..., K] and ``scale`` [..., groups]: float32 result.

    Both operations in the model dtype, as the compiled model (and :func:`group.dequantize`) does.
    """
    dtype = np.dtype(q.model_dtype)
    k = codes.shape[-1]
    per_elem = np.repeat(np.asarray(scale).astype(dtype), q.group_size, axis=-1)[..., :k]
    return ((codes.astype(dtype) - dtype.type(q.max_int_value)) * per_elem).astype(np.float32)


def _codes_for(groups: np.ndarray, scale: np.ndarray, q: Quantization) -> np.ndarray:
    """Nearest codes for ``groups`` [..., gs] under ``scale`` [...] (float32 codes, zero scale -> 0 weight)."""
    safe = np.where(scale == 0, np.float32(1), scale).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        t = groups / safe[..., None]
    np.rint(t, out=t)
    t += np.float32(q.max_int_value)
    np.clip(t, 0, top_code(q), out=t)
    return t


def _to_scale_dtype(scale: np.ndarray, q: Quantization) -> np.ndarray:
    """Round candidate scales to what the bundle stores (float16 for f16 models), as float32."""
    return np.asarray(scale, np.float32).astype(q.model_dtype).astype(np.float32)


def _candidate_scales(groups: np.ndarray, q: Quantization, ratios: tuple[float, ...]) -> list[np.ndarray]:
    """Scales [n, groups] to try: both signs times ``ratios`` of the no-clip bound, and MLC's own scale.

    With ``s > 0`` the levels span ``[-mi, mi + 1] * s``; with ``s < 0`` they span ``[-(mi + 1), mi] * |s|``.
    The no-clip bound of each sign is the smallest ``|s|`` that reaches both extremes of the group.
    """
    mi = np.float32(q.max_int_value)
    top = np.float32(q.max_int_value + 1)
    high = np.maximum(groups.max(axis=-1), 0)
    low = np.maximum(-groups.min(axis=-1), 0)
    positive = np.maximum(high / top, low / mi)
    negative = np.maximum(high / mi, low / top)
    candidates = [_to_scale_dtype(np.maximum(high, low).astype(q.model_dtype) / np.dtype(q.model_dtype).type(mi), q)]
    for r in ratios:
        candidates.append(_to_scale_dtype(positive * np.float32(r), q))
        candidates.append(_to_scale_dtype(-negative * np.float32(r), q))
    return candidates


def _group_error(groups: np.ndarray, scale: np.ndarray, d: np.ndarray, q: Quantization) -> np.ndarray:
    """Weighted squared error per group [n, G] of the nearest codes under ``scale``, in float32.

    ``w - (r) s = s (w / s - r)`` with ``r`` the clipped rounded quotient, so the error is
    ``s² Σ d (t - r)²`` over the quotients ``t``: four passes over the group.  (The decoder's final
    rounding to float16 moves a level by at most 2**-11 of itself, far below the quantization step,
    so the search ignores it; the reported errors use the decoded values.)
    """
    safe = np.where(scale == 0, np.float32(1), scale)
    with np.errstate(over="ignore", invalid="ignore"):
        t = groups / safe[..., None]
    r = np.rint(t)
    np.clip(r, -np.float32(q.max_int_value), np.float32(top_code(q) - q.max_int_value), out=r)
    t -= r
    t *= t
    t *= d
    return t.sum(axis=-1) * (safe * safe)


def _search_groups(groups: np.ndarray, d: np.ndarray, q: Quantization, ratios: tuple[float, ...]) -> np.ndarray:
    """The best scale [n, G] (float32, representable in the model dtype) over the candidates, per group."""
    best_err = best_scale = None
    for scale in _candidate_scales(groups, q, ratios):
        err = _group_error(groups, scale, d, q)
        if best_err is None:
            best_err, best_scale = err, scale
            continue
        better = err < best_err
        np.copyto(best_err, err, where=better)
        np.copyto(best_scale, scale, where=better)
    return best_scale


def _in_threads(run, starts: range) -> None:
    """``run(start)`` for every block, on all cores (numpy releases the GIL inside each operation)."""
    workers = min(_worker_count(None), len(starts))
    if workers <= 1:
        for start in starts:
            run(start)
        return
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="calibrated") as pool:
        for future in [pool.submit(run, start) for start in starts]:
            future.result()


def _rows_per_block(width: int) -> int:
    return max(1, _BLOCK_ELEMS // max(1, width))


def search_scales(
    weight: np.ndarray,
    q: Quantization,
    importance: np.ndarray | None = None,
    *,
    ratios: tuple[float, ...] = SEARCH_RATIOS,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group scale search: codes [N, K] uint8 and scales [N, groups] (model dtype).

    ``importance`` [K] is the mean squared activation of each input channel (``diag(XᵀX) / T``): the
    error ``Σ_k importance_k (w_k - ŵ_k)²`` is what a group contributes to the output's squared error
    if input channels were uncorrelated.  ``None`` weighs every channel equally (embeddings).
    """
    weight = np.asarray(weight, np.float32)
    n, k = weight.shape
    d = _padded_importance(importance, k, q)
    codes = np.empty((n, q.num_groups(k) * q.group_size), np.uint8)
    scales = np.empty((n, q.num_groups(k)), np.float32)
    step = _rows_per_block(codes.shape[1])

    def run(start: int) -> None:
        stop = min(n, start + step)
        groups = _padded_groups(weight[start:stop], q)
        s = _search_groups(groups, d, q, ratios)
        codes[start:stop] = _codes_for(groups, s, q).reshape(stop - start, -1)
        scales[start:stop] = s

    _in_threads(run, range(0, n, step))
    return np.ascontiguousarray(codes[:, :k]), scales.astype(q.model_dtype)


def weighted_error(weight: np.ndarray, decoded: np.ndarray, importance: np.ndarray | None) -> float:
    """``Σ importance_k (w - ŵ)²`` over a weight [N, K] (plain squared error for ``importance=None``)."""
    diff = np.asarray(weight, np.float64) - np.asarray(decoded, np.float64)
    d = 1.0 if importance is None else np.asarray(importance, np.float64)
    return float(((diff * diff) * d).sum())


def _searched_error(weight: np.ndarray, d: np.ndarray, q: Quantization) -> float:
    """Activation-weighted error after the per-group scale search (AWQ's inner objective)."""
    total = 0.0
    step = _rows_per_block(d.size)
    for start in range(0, weight.shape[0], step):
        groups = _padded_groups(weight[start:start + step], q)
        total += float(_group_error(groups, _search_groups(groups, d, q, SEARCH_RATIOS), d, q).sum())
    return total


def awq_scales(
    weights: list[np.ndarray], importance: np.ndarray, q: Quantization, *, alphas: tuple[float, ...] = AWQ_ALPHAS
) -> np.ndarray:
    """AWQ: per-input-channel factors ``s`` [K] for the linears that share one input (their weights [N_i, K]).

    ``s = mean(x²)^(alpha/2)``, normalised to geometric mean 1, with ``alpha`` from a grid minimising
    ``Σ_k mean(x_k²) (W - Q(W s) / s)²`` summed over the linears, ``Q`` the scale search; ``alpha = 0``
    (no scaling) is in the grid, so by this measure AWQ is never worse than the search alone.  The linears use ``W * s`` and their
    input must become ``x / s``.
    """
    importance = np.asarray(importance, np.float64)
    k = importance.size
    rms = np.sqrt(np.maximum(importance, 0))
    positive = rms > 0
    floor = rms[positive].min() if positive.any() else 1.0
    rms = np.where(positive, rms, floor)
    best = (np.inf, np.ones(k, np.float32))
    # alpha is one number per input: an even sample of rows judges it as well as every row does.
    weights = [w[:: max(1, len(w) // _AWQ_SAMPLE_ROWS)] for w in weights]
    for alpha in alphas:
        s = rms**alpha
        s = (s / np.exp(np.log(s).mean())).astype(np.float32)
        d_scaled = _padded_importance(importance / (s.astype(np.float64) ** 2), k, q)
        err = sum(_searched_error(np.asarray(w, np.float32) * s, d_scaled, q) for w in weights)
        if err < best[0]:
            best = (err, s)
    return best[1]


def _inverse_cholesky_upper(h: np.ndarray) -> np.ndarray:
    """Upper-triangular ``U`` with ``H⁻¹ = UᵀU``: its rows are GPTQ's update directions.

    With ``J`` the reversal permutation and ``JHJ = LLᵀ``, ``U = J L⁻¹ J``: one Cholesky factorisation
    and one triangular solve, instead of factorising, inverting and factorising again.
    """
    import torch

    reversed_h = torch.from_numpy(np.ascontiguousarray(h[::-1, ::-1]))
    lower = torch.linalg.cholesky(reversed_h)
    eye = torch.eye(h.shape[0], dtype=lower.dtype)
    inverse = torch.linalg.solve_triangular(lower, eye, upper=False).numpy()
    return np.ascontiguousarray(inverse[::-1, ::-1])


def gptq(
    weight: np.ndarray,
    hessian: np.ndarray,
    q: Quantization,
    *,
    damp: float = 0.01,
    block_groups: int = 4,
    max_columns: int | None = None,
    ratios: tuple[float, ...] = SEARCH_RATIOS,
) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ with group scales: codes [N, K] uint8 and scales [N, groups] (model dtype).

    ``max_columns`` caps the cost, which grows as K³ (the factorisation) and N·K² (the updates): the
    input columns are cut, at group boundaries, into runs of at most that many, and each run is
    compensated within itself only (the Hessian's off-diagonal blocks between runs are dropped).
    ``None``: one run, exact GPTQ.
    """
    k = np.shape(weight)[1]
    run = None if max_columns is None else max(q.group_size, max_columns // q.group_size * q.group_size)
    if run is None or run >= k:
        return _gptq_run(weight, hessian, q, damp=damp, block_groups=block_groups, ratios=ratios)
    parts = [
        _gptq_run(weight[:, a:a + run], hessian[a:a + run, a:a + run], q, damp=damp, block_groups=block_groups, ratios=ratios)
        for a in range(0, k, run)
    ]
    return np.concatenate([c for c, _ in parts], axis=1), np.concatenate([s for _, s in parts], axis=1)


def _gptq_run(
    weight: np.ndarray,
    hessian: np.ndarray,
    q: Quantization,
    *,
    damp: float,
    block_groups: int,
    ratios: tuple[float, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Exact GPTQ over all columns of ``weight``.

    ``hessian`` [K, K] is ``XᵀX / T`` of the linear's calibration inputs.  ``damp`` adds that fraction of
    its mean diagonal (the inverse must exist and stay well conditioned); channels never active get a
    unit diagonal.  Columns are processed in blocks of ``block_groups`` whole groups ("lazy batch"
    updates: the error of a block reaches the later columns in one matrix product), so a group's scale
    is searched on columns that already carry every earlier column's compensation.
    """
    weight = np.asarray(weight, np.float32)
    n, k = weight.shape
    gs = q.group_size
    width = q.num_groups(k) * gs
    h = np.zeros((width, width), np.float32)
    h[:k, :k] = hessian
    diag = np.diagonal(h).copy()
    importance = np.where(np.arange(width) < k, diag, 0.0).astype(np.float32)
    dead = diag <= 0
    h[dead, dead] = 1.0
    mean_diag = float(diag[:k].mean()) if k else 0.0
    h[np.diag_indices(width)] += damp * (mean_diag if mean_diag > 0 else 1.0)
    upper = _inverse_cholesky_upper(h)
    # Transposed ([column, row]) so that one input column is one contiguous vector.
    wt = np.zeros((width, n), np.float32)
    wt[:k] = weight.T
    codes = np.empty((width, n), np.uint8)
    scales = np.empty((width // gs, n), np.float32)
    mi, top = np.float32(q.max_int_value), np.float32(top_code(q))
    rounded = q.model_dtype != "float32"
    block = gs * block_groups
    for i1 in range(0, width, block):
        i2 = min(width, i1 + block)
        w1 = wt[i1:i2]  # a view: updated in place
        err1 = np.empty_like(w1)
        u1 = upper[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = col // gs
            if col % gs == 0:
                group = np.ascontiguousarray(w1[i:i + gs].T)[:, None, :]
                s = _search_groups(group, importance[col:col + gs][None, :], q, ratios)[:, 0]
                scales[g] = s
                safe = np.where(s == 0, np.float32(1), s)
            c = np.rint(w1[i] / safe)
            c += mi
            np.clip(c, 0, top, out=c)
            codes[col] = c
            deq = (c - mi) * s
            if rounded:  # the value the decoder will produce
                deq = deq.astype(q.model_dtype).astype(np.float32)
            e = (w1[i] - deq) / u1[i, i]
            w1[i + 1:] -= u1[i, i + 1:, None] * e[None, :]
            err1[i] = e
        if i2 < width:
            wt[i2:] -= upper[i1:i2, i2:].T @ err1
    return np.ascontiguousarray(codes[:k].T), np.ascontiguousarray(scales.T).astype(q.model_dtype)


def encode_linear(codes: np.ndarray, scale: np.ndarray, q: Quantization) -> tuple[np.ndarray, np.ndarray]:
    """Codes [N, K] + scales [N, groups] -> (``q_weight``, ``q_scale``) in the quantization's layout.

    Packing is :func:`group.pack` (MLC's: first element in the lowest bits, ragged K zero-padded); "KN"
    transposes both, as MLC's ``quantize_weight(..., output_transpose=True)``.
    """
    q_weight = pack(codes.astype(np.uint32), q)
    q_scale = np.asarray(scale).astype(q.model_dtype)
    if q.linear_weight_layout == "KN":
        return np.ascontiguousarray(q_weight.T), np.ascontiguousarray(q_scale.T)
    return q_weight, q_scale


def encode_embedding(codes: np.ndarray, scale: np.ndarray, q: Quantization) -> tuple[np.ndarray, np.ndarray]:
    """Codes [V, H] + scales [V, groups] -> (``q_weight``, ``q_scale``), never transposed."""
    return pack(codes.astype(np.uint32), q), np.asarray(scale).astype(q.model_dtype)
