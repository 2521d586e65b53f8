"""Group-quantized Linear and Embedding that dequantize inside the compiled model.

The weights stay packed on the device (``q_weight`` words + ``q_scale``, exactly as
:mod:`hf2mlc.quantization.group` and MLC LLM write them) and are expanded to ``(q - max_int) * scale``
in the model dtype only where they are consumed: the dequantization is one stage of the same
TensorIR function as the matmul (or the row gather of the embedding), so GPU schedules (dlight) inline
it into the matmul's loads and no dequantized copy of a weight exists in device memory.  (The CPU
schedule of host builds dequantizes one slice of a weight at a time per thread when many rows share
it, in prefill.)

:func:`quantize_model` swaps a float model's ``nn.Linear``/``nn.Embedding`` for these, which gives the
parameter names MLC uses (``<module>.q_weight``, ``<module>.q_scale``; biases unchanged).
"""

from __future__ import annotations

from typing import Any

from tvm import te, tirx
from tvm.relax.frontend import nn

from . import Quantization


def _unpack(q_weight: te.Tensor, quantization: Quantization, axis: int, index: list[Any]) -> tirx.PrimExpr:
    """The unsigned integer at ``index`` (unpacked coordinates) of a packed tensor, in the storage dtype.

    Element ``r`` of a storage word sits at bits ``[r * bits, (r + 1) * bits)``: the first element of
    each word in the lowest bits (MLC's ``pack_weight``).
    """
    per_word = quantization.num_elem_per_storage
    storage = quantization.storage_dtype
    word_index = list(index)
    word_index[axis] = index[axis] // per_word
    shift = ((index[axis] % per_word) * quantization.bits).astype(storage)
    mask = tirx.const((1 << quantization.bits) - 1, storage)
    return tirx.bitwise_and(tirx.shift_right(q_weight(*word_index), shift), mask)


def dequantize_element(
    q_weight: te.Tensor, q_scale: te.Tensor, quantization: Quantization, axis: int, index: list[Any]
) -> tirx.PrimExpr:
    """``(q - max_int) * scale`` at ``index``, in the model dtype's values as MLC computes them.

    Computed in float32 and rounded to the model dtype once: ``q - max_int`` is a small integer and
    its product with a float16 scale needs at most 15 significant bits, so both are exact in
    float32 and the one rounding gives float16's own result bit for bit (for a float32 model the
    operations are float32's anyway).  CPUs without float16 arithmetic would otherwise convert
    around every operation: host decode ran at half the speed."""
    scale_index = list(index)
    scale_index[axis] = index[axis] // quantization.group_size
    offset = tirx.const(quantization.max_int_value, "float32")
    q = _unpack(q_weight, quantization, axis, index).astype("float32")
    return ((q - offset) * q_scale(*scale_index).astype("float32")).astype(quantization.model_dtype)


def _dequantize_matmul(
    x: te.Tensor,
    q_weight: te.Tensor,
    q_scale: te.Tensor,
    *,
    quantization: Quantization,
    in_features: int,
    out_features: int,
    out_dtype: str,
) -> te.Tensor:
    """``x @ W.T`` with ``W`` dequantized in a first stage of the same function.

    The "dequantize" stage is injective; dlight's matmul and GEMV rules inline it into the reduction.
    """
    if quantization.linear_weight_layout == "KN":  # q_weight [K/elem, N], q_scale [K/group, N]
        weight = te.compute(
            (in_features, out_features),
            lambda k, n: dequantize_element(q_weight, q_scale, quantization, 0, [k, n]),
            name="dequantize",
        )

        def w_at(n, k):
            return weight[k, n]

    else:  # NK: q_weight [N, K/elem], q_scale [N, K/group]
        weight = te.compute(
            (out_features, in_features),
            lambda n, k: dequantize_element(q_weight, q_scale, quantization, 1, [n, k]),
            name="dequantize",
        )

        def w_at(n, k):
            return weight[n, k]

    return matmul_accumulating_in_float32(x, w_at, in_features, out_features, out_dtype)


def matmul_accumulating_in_float32(x: te.Tensor, w_at, in_features, out_features, out_dtype: str) -> te.Tensor:
    """``out[..., n] = sum_k x[..., k] * w_at(n, k)``, summed in float32 and cast to ``out_dtype`` last.

    A float16 running sum over thousands of products loses digits (and on CPUs without float16
    arithmetic every step is a conversion); products are exact in float32, so only the final
    rounding to float16 remains.
    """
    acc_dtype = "float32" if out_dtype in ("float16", "bfloat16") else out_dtype
    k = te.reduce_axis((0, in_features), name="k")
    acc = te.compute(
        (*x.shape[:-1], out_features),
        lambda *i: te.sum(x(*i[:-1], k).astype(acc_dtype) * w_at(i[-1], k).astype(acc_dtype), axis=k),
        name="matmul",
    )
    if acc_dtype == out_dtype:
        return acc
    return te.compute(acc.shape, lambda *i: acc(*i).astype(out_dtype), name="matmul_cast")


class GroupQuantLinear(nn.Module):
    """A Linear whose weight is stored group-quantized in the quantization's layout (KN or NK)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        quantization: Quantization,
        *,
        bias: bool = True,
        out_dtype: str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.out_dtype = out_dtype
        self.quantization = quantization
        n_storage = quantization.num_storage(in_features)
        n_group = quantization.num_groups(in_features)
        if quantization.linear_weight_layout == "KN":
            self.q_weight = nn.Parameter((n_storage, out_features), quantization.storage_dtype)
            self.q_scale = nn.Parameter((n_group, out_features), quantization.model_dtype)
        else:
            self.q_weight = nn.Parameter((out_features, n_storage), quantization.storage_dtype)
            self.q_scale = nn.Parameter((out_features, n_group), quantization.model_dtype)
        self.bias = nn.Parameter((out_features,), out_dtype or quantization.model_dtype) if bias else None

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        out_dtype = self.out_dtype or self.quantization.model_dtype
        y = nn.op.tensor_expr_op(
            lambda xt, qw, qs: _dequantize_matmul(
                xt,
                qw,
                qs,
                quantization=self.quantization,
                in_features=self.in_features,
                out_features=self.out_features,
                out_dtype=out_dtype,
            ),
            name_hint="dequantize_matmul",
            args=[x, self.q_weight, self.q_scale],
        )
        if self.bias is not None:
            y = y + self.bias
        return y

    def to(self, dtype: str | None = None) -> None:
        """Keep the stored dtypes: packed words are integers and the scales are already the model dtype."""


class GroupQuantEmbedding(nn.Module):
    """An Embedding whose table is group-quantized along the hidden axis (never transposed)."""

    def __init__(self, num: int, dim: int, quantization: Quantization) -> None:
        super().__init__()
        self.num = num
        self.dim = dim
        self.quantization = quantization
        self.q_weight = nn.Parameter((num, quantization.num_storage(dim)), quantization.storage_dtype)
        self.q_scale = nn.Parameter((num, quantization.num_groups(dim)), quantization.model_dtype)

    def forward(self, ids: nn.Tensor) -> nn.Tensor:
        """Gather and dequantize only the requested rows, in one injective function."""
        flat = ids if ids.ndim == 1 else nn.op.reshape(ids, [-1])

        def gather(idx: te.Tensor, qw: te.Tensor, qs: te.Tensor) -> te.Tensor:
            return te.compute(
                (idx.shape[0], self.dim),
                lambda i, h: dequantize_element(qw, qs, self.quantization, 1, [idx[i], h]),
                name="dequantize_take",
            )

        rows = nn.op.tensor_expr_op(gather, name_hint="dequantize_take", args=[flat, self.q_weight, self.q_scale])
        if ids.ndim == 1:
            return rows
        return nn.op.reshape(rows, [*ids.shape, self.dim])

    def to(self, dtype: str | None = None) -> None:
        """Keep the stored dtypes (see :meth:`GroupQuantLinear.to`)."""


def quantize_model(model: nn.Module, quantization: Quantization) -> nn.Module:
    """Swap ``model``'s float Linear/Embedding modules for group-quantized ones, in place; return it.

    Which modules are swapped follows MLC: every Linear (the final ``embed_out`` too when
    ``quantize_final_fc``) and every Embedding when ``quantize_embedding``.  Biases keep their dtype
    (the MLP's ``ffn_out_dtype`` included) by keeping the Linear's ``out_dtype``.  A model under a
    no-quant scheme is returned unchanged.
    """
    if not quantization.is_quantized:
        return model

    class _Swap(nn.Mutator):
        def visit_module(self, name: str, node: Any) -> Any:
            if isinstance(node, nn.Linear):
                if name.split(".")[-1] == "embed_out" and not quantization.quantize_final_fc:
                    return node
                out_features, in_features = (int(d) for d in node.weight.shape)
                return GroupQuantLinear(
                    in_features,
                    out_features,
                    quantization,
                    bias=node.bias is not None,
                    out_dtype=node.out_dtype,
                )
            if isinstance(node, nn.Embedding) and quantization.quantize_embedding:
                num, dim = (int(d) for d in node.weight.shape)
                return GroupQuantEmbedding(num, dim, quantization)
            return self.visit(name, node)

    return _Swap().visit("", model)
