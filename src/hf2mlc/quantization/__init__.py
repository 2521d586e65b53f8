"""The quantization schemes hf2mlc can produce, named and laid out exactly as MLC LLM names them.

A bundle's ``mlc-chat-config.json`` carries only the scheme's *name* (``"q4f16_0"``); MLC's runtime
and app derive everything else from that name, so every field here must agree with MLC LLM's own
registry (python/mlc_llm/quantization/quantization.py): group size, bit width, storage type, model
dtype and the layout of quantized linear weights.  The numpy packers that produce the tensors live in
:mod:`hf2mlc.quantization.group`; the TVM modules that dequantize inside the model are elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

_DTYPE_BITS = {"uint32": 32, "uint16": 16, "uint8": 8}


@dataclass(frozen=True)
class Quantization:
    """One quantization scheme.

    For ``kind == "group-quant"``: each group of ``group_size`` consecutive weights along the
    reduction axis shares one scale in ``model_dtype``; every weight becomes an unsigned
    ``bits``-wide integer ``q`` with ``w ~= (q - max_int_value) * scale``, packed
    ``num_elem_per_storage`` to a ``storage_dtype`` word, first element in the lowest bits.
    ``linear_weight_layout`` "KN" stores a Linear's quantized weight transposed ([K/elem, N]); "NK"
    keeps Hugging Face's [N, K/elem].  Embeddings are never transposed.
    """

    name: str
    kind: str  # "no-quant" | "group-quant"
    model_dtype: str  # "float16" | "float32"
    group_size: int = 0
    quantize_dtype: str = ""  # "int4", "int3"
    storage_dtype: str = ""  # "uint32"
    linear_weight_layout: str = ""  # "KN" | "NK"
    quantize_embedding: bool = True
    quantize_final_fc: bool = True

    def __post_init__(self) -> None:
        # Catch a mistyped registry entry at import time rather than as wrong bytes on disk.
        if self.kind not in ("no-quant", "group-quant"):
            raise ValueError(f"{self.name}: unknown kind {self.kind!r}")
        if self.model_dtype not in ("float16", "float32"):
            raise ValueError(f"{self.name}: unsupported model dtype {self.model_dtype!r}")
        if self.kind == "group-quant":
            if not self.quantize_dtype.startswith("int") or self.storage_dtype not in _DTYPE_BITS:
                raise ValueError(f"{self.name}: bad quantize/storage dtype")
            if self.linear_weight_layout not in ("KN", "NK"):
                raise ValueError(f"{self.name}: linear_weight_layout must be 'KN' or 'NK'")
            if self.group_size <= 0 or self.group_size % self.num_elem_per_storage:
                raise ValueError(f"{self.name}: group size must be a positive multiple of elements per storage")

    @property
    def is_quantized(self) -> bool:
        return self.kind == "group-quant"

    @property
    def bits(self) -> int:
        """Bits of one quantized value (0 for no quantization)."""
        return int(self.quantize_dtype[3:]) if self.quantize_dtype else 0

    @property
    def storage_bits(self) -> int:
        return _DTYPE_BITS.get(self.storage_dtype, 0)

    @property
    def num_elem_per_storage(self) -> int:
        """Quantized values per storage word; leftover high bits stay zero (int3: 10 per uint32)."""
        return self.storage_bits // self.bits if self.bits else 0

    @property
    def num_storage_per_group(self) -> int:
        return self.group_size // self.num_elem_per_storage if self.bits else 0

    @property
    def max_int_value(self) -> int:
        """The offset that makes the signed range unsigned: q = round(w / scale) + max_int_value."""
        return 2 ** (self.bits - 1) - 1 if self.bits else 0

    def num_groups(self, k: int) -> int:
        """Groups along a reduction axis of length ``k`` (a ragged last group is zero-padded)."""
        return -(-k // self.group_size)

    def num_storage(self, k: int) -> int:
        """Storage words along a packed axis of original length ``k``."""
        return self.num_groups(k) * self.num_storage_per_group


def _group(name: str, group_size: int, qdtype: str, model_dtype: str, layout: str) -> Quantization:
    return Quantization(
        name=name,
        kind="group-quant",
        model_dtype=model_dtype,
        group_size=group_size,
        quantize_dtype=qdtype,
        storage_dtype="uint32",
        linear_weight_layout=layout,
        quantize_embedding=True,
        quantize_final_fc=True,
    )


def _none(name: str, model_dtype: str) -> Quantization:
    # MLC's NoQuantize has no embedding/final-fc flags; False says truthfully that nothing is quantized.
    return Quantization(name=name, kind="no-quant", model_dtype=model_dtype, quantize_embedding=False, quantize_final_fc=False)


#: The schemes hf2mlc supports, with MLC LLM's names and parameters.
QUANTIZATIONS: dict[str, Quantization] = {
    q.name: q
    for q in (
        _none("q0f16", "float16"),
        _none("q0f32", "float32"),
        _group("q3f16_0", 40, "int3", "float16", "KN"),
        _group("q3f16_1", 40, "int3", "float16", "NK"),
        _group("q4f16_0", 32, "int4", "float16", "KN"),
        _group("q4f16_1", 32, "int4", "float16", "NK"),
        _group("q4f32_1", 32, "int4", "float32", "NK"),
    )
}


def _lookup(registry: dict, name: str, what: str, where: str):
    """``registry[name]``; a bad name is a user error listing the valid ones and where to set it."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise UserError(f"{what} {name!r} is not supported; use one of: {', '.join(registry)} ({where}).") from None


def get_quantization(name: str) -> Quantization:
    """Look up a scheme by its MLC name."""
    return _lookup(QUANTIZATIONS, name, "quantization", "set the quantization in config/config.yaml")


@dataclass(frozen=True)
class Method:
    """How codes and scales are chosen; every method writes the same MLC format, so the runtime never knows.

    ``rtn`` is MLC's own round-to-nearest (byte-identical to ``mlc_llm convert_weight``); the others use
    calibration activations (:mod:`hf2mlc.quantization.calibrated`) and all 2**bits codes.
    """

    name: str
    #: Per-group scale search minimising the activation-weighted reconstruction error.
    scale_search: bool
    #: AWQ-style per-input-channel scaling, folded exactly into the preceding LayerNorm / value rows.
    awq: bool
    #: GPTQ-style error compensation (needs the full XᵀX of every linear's input).
    gptq: bool
    summary: str

    @property
    def calibrated(self) -> bool:
        return self.scale_search or self.awq or self.gptq

    @property
    def weights_suffix(self) -> str:
        """The part of a weights directory name that tells methods apart ("" for rtn: paths unchanged)."""
        return "" if self.name == "rtn" else f"-{self.name}"


#: The methods, in order of cost.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("rtn", False, False, False, "MLC's round-to-nearest, byte-identical to MLC's quantizer"),
        Method("scale_search", True, False, False, "per-group scale search, activation-weighted, full code range"),
        Method("awq", True, True, False, "AWQ per-channel scaling folded into LayerNorm/value rows, then scale search"),
        Method("gptq", True, False, True, "GPTQ error compensation with searched group scales"),
        Method("awq_gptq", True, True, True, "AWQ scaling folded in, then GPTQ with searched group scales"),
    )
}


def get_method(name: str) -> Method:
    """Look up a quantization method by name."""
    return _lookup(METHODS, name, "quantization method", "set `method:` beside `quantization:` in config/config.yaml")


__all__ = ["METHODS", "QUANTIZATIONS", "Method", "Quantization", "get_method", "get_quantization"]
