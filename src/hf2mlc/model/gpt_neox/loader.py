"""GPT-NeoX's Hugging Face names → MLC's: the checkpoint spellings, the tensors that are not weights, the
shapes config.json implies, and the fused-QKV row order.

It lives beside the model and its parameter set (MLC LLM keeps each architecture's loader in the
architecture's folder too), while :mod:`hf2mlc.loader` holds what any architecture's checkpoint needs:
reading safetensors and PyTorch files one tensor at a time.

Names are mapped to the ones :func:`hf2mlc.model.gpt_neox.params.param_specs` uses: the ``gpt_neox.`` prefix
is added where a checkpoint lacks it; transformers 5's ``lm_head.weight`` is read as
``embed_out.weight``; buffers that are not weights (``attention.bias``, ``attention.masked_bias``,
``rotary_emb.inv_freq``; LINE's .bin stores the first two as ``torch.BoolStorage``) are dropped;
``embed_out.weight`` comes from ``gpt_neox.embed_in.weight`` for tied embeddings; and
``query_key_value`` rows are reordered from Hugging Face's per-head [q, k, v] to [all q, all k,
all v], MLC's fused-QKV layout.
"""

from __future__ import annotations

import logging

import numpy as np

from ...errors import UserError
from ...loader.huggingface import HuggingFaceWeights, TensorInfo
from .config import GPTNeoXConfig

logger = logging.getLogger(__name__)

#: Suffixes of checkpoint entries that are buffers, not weights (MLC lists them as unused).
DROPPED_SUFFIXES = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")


def canonical_name(name: str) -> str:
    """The name under which param_specs looks a checkpoint tensor up.

    Adds the ``gpt_neox.`` prefix that bare ``GPTNeoXModel`` checkpoints lack, and maps
    transformers 5's ``lm_head.`` back to ``embed_out.``, the name older checkpoints (LINE, rinna,
    Pythia) and MLC use; transformers itself renames ``embed_out.`` to ``lm_head.`` when loading.
    """
    if name.startswith("lm_head."):
        return "embed_out." + name.removeprefix("lm_head.")
    if name.startswith("gpt_neox.") or name.startswith("embed_out."):
        return name
    return f"gpt_neox.{name}"


def is_dropped(name: str) -> bool:
    return name.endswith(DROPPED_SUFFIXES)


class GPTNeoXCheckpoint(HuggingFaceWeights):
    """A GPT-NeoX checkpoint's weights under :func:`canonical_name`, its buffers dropped."""

    def canonical(self, stored: str) -> str | None:
        return None if is_dropped(stored) else canonical_name(stored)

    def describe_missing(self, name: str) -> str:
        return f"{name!r} (nor {name.removeprefix('gpt_neox.')!r})"


def expected_source_shapes(config: GPTNeoXConfig) -> dict[str, tuple[int, ...]]:
    """The Hugging Face shape of every tensor MLC's GPT-NeoX is built from (canonical names)."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"gpt_neox.embed_in.weight": (v, h), "embed_out.weight": (v, h)}
    for n in range(config.num_hidden_layers):
        p = f"gpt_neox.layers.{n}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            shapes[f"{p}.{norm}.weight"] = shapes[f"{p}.{norm}.bias"] = (h,)
        for name, out_f, in_f in (
            ("attention.query_key_value", 3 * h, h),
            ("attention.dense", h, h),
            ("mlp.dense_h_to_4h", i, h),
            ("mlp.dense_4h_to_h", h, i),
        ):
            shapes[f"{p}.{name}.weight"] = (out_f, in_f)
            shapes[f"{p}.{name}.bias"] = (out_f,)
    shapes["gpt_neox.final_layer_norm.weight"] = shapes["gpt_neox.final_layer_norm.bias"] = (h,)
    return shapes


def reorder_qkv(array: np.ndarray, num_heads: int) -> np.ndarray:
    """Rows [head, (q|k|v), head_dim] -> [(q|k|v), head, head_dim], for a fused weight or bias."""
    rows = array.shape[0]
    head_dim = rows // (3 * num_heads)
    rest = array.shape[1:]
    out = array.reshape(num_heads, 3, head_dim, *rest).swapaxes(0, 1)
    return np.ascontiguousarray(out).reshape(array.shape)


def qkv_row_order(rows: int, num_heads: int) -> np.ndarray:
    """``reorder_qkv(a) == a[qkv_row_order(len(a), num_heads)]``: lets a quantizer that works on row
    blocks regroup the fused QKV rows as it reads them, instead of copying the whole weight first."""
    return reorder_qkv(np.arange(rows), num_heads)


class SourceReader:
    """Serves the Hugging Face tensors that :func:`param_specs` names as ``source``.

    Applies the tied-embedding fallback and the qkv reorder, and checks every shape against the
    config, so that a checkpoint that does not fit fails with the tensor and file named.
    """

    def __init__(self, weights: GPTNeoXCheckpoint, config: GPTNeoXConfig) -> None:
        self.weights = weights
        self.config = config
        self.shapes = expected_source_shapes(config)
        self._warned_tie = False

    def resolve(self, name: str) -> str:
        """The checkpoint tensor that holds ``name`` (``embed_out`` may live in ``embed_in``)."""
        if name == "embed_out.weight" and name not in self.weights:
            if not self.config.tie_word_embeddings and not self._warned_tie:
                logger.warning(
                    "%s: no embed_out.weight although tie_word_embeddings is false; using gpt_neox.embed_in.weight",
                    self.weights.where(),
                )
                self._warned_tie = True
            return "gpt_neox.embed_in.weight"
        return name

    def info(self, name: str) -> TensorInfo:
        info = self.weights.info(self.resolve(name))
        expected = self.shapes.get(name)
        if expected is not None and info.shape != expected:
            raise UserError(
                f"{info.file}: tensor {info.stored_name!r} has shape {list(info.shape)}, but config.json "
                f"(hidden_size {self.config.hidden_size}, intermediate_size {self.config.intermediate_size}, "
                f"vocab_size {self.config.vocab_size}) implies {list(expected)}; the weights and config.json "
                "do not belong together."
            )
        return info

    def read(self, name: str, *, reorder: bool = False) -> np.ndarray:
        info = self.info(name)
        array = self.weights.read(info.name)
        return reorder_qkv(array, self.config.num_attention_heads) if reorder else array
