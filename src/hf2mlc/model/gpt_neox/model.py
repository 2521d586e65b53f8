"""GPT-NeoX as a TVM ``nn.Module`` with a paged KV cache, exporting the functions MLC LLM's engine calls.

The module mirrors MLC LLM's own ``gpt_neox`` model so that a library built here is a drop-in MLC model
library: the same parameter names, order, shapes and dtypes (:mod:`hf2mlc.model.gpt_neox.params` is the
contract, and a test holds this module to it), the same dtype flow (MLP in ``ffn_out_dtype``,
``embed_out`` then float32 logits) and the same exported functions and argument specs (``embed``,
``prefill``, ``decode``, ``batch_prefill``, ``batch_decode``, ``batch_verify``, the KV-cache
constructor, ``softmax_with_temperature``).

Differences from MLC that do not change the ABI: the vocabulary size is a static dimension (MLC
leaves it symbolic; static lets the compiler specialise the final matmul); matmuls sum in float32
before rounding to float16 (MLC sums in the output dtype; float32 sums are more accurate and, on
CPUs, much faster); and the KV cache is built directly as apache-tvm's ``TIRPagedKVCache`` under the
name MLC's compile pipeline gives it (``create_tir_paged_kv_cache``), because MLC's generic
creation call does not exist outside MLC.
"""

from __future__ import annotations

from typing import Any

from tvm import relax as rx
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache
from tvm.target import Target

from ...quantization import Quantization, get_quantization
from ...quantization.nn import quantize_model
from .config import GELU_TANH, GPTNeoXConfig

#: What the engine calls the KV-cache constructor in a model library (MLC's compile renames the
#: model's ``create_paged_kv_cache`` to this; ``create_flashinfer_paged_kv_cache`` is CUDA-only).
KV_CACHE_FUNCTION = "create_tir_paged_kv_cache"
#: RoPE is applied by the cache's own rotary kernel when appending (not inline in attention): the CPU
#: attention kernels are compiled for that (compiler_pass.cpu_attention).
ROPE_MODE = RopeMode.NORMAL

#: Functions every library built from this model exports (besides ``_metadata``).
EXPORTED_FUNCTIONS = (
    "embed",
    "prefill",
    "decode",
    "batch_prefill",
    "batch_decode",
    "batch_verify",
    KV_CACHE_FUNCTION,
    "softmax_with_temperature",
)


class GPTNeoXAttention(nn.Module):
    def __init__(self, config: GPTNeoXConfig, dtype: str) -> None:
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        # Output rows are [all q | all k | all v] (the converter reorders Hugging Face's per-head
        # interleave), which is the fused layout the KV cache's attention expects.
        self.query_key_value = nn.Linear(hidden, 3 * hidden, bias=True, dtype=dtype)
        self.dense = nn.Linear(hidden, hidden, bias=True, dtype=dtype)

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.query_key_value(x), (b, s, 3 * self.num_heads, self.head_dim))
        out = kv_cache.attention_with_fused_qkv(layer_id, qkv, self.num_heads, sm_scale=self.head_dim**-0.5)
        return self.dense(op.reshape(out, (b, s, self.num_heads * self.head_dim)))


class GPTNeoXMLP(nn.Module):
    def __init__(self, config: GPTNeoXConfig, dtype: str, ffn_out_dtype: str) -> None:
        # MLC computes both MLP matmuls (and stores their biases) in ffn_out_dtype: float32 by
        # default, which keeps the 4x-wide activations from overflowing float16.
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size, dtype=dtype, out_dtype=ffn_out_dtype)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size, dtype=dtype, out_dtype=ffn_out_dtype)
        self.gelu_approximate = "tanh" if config.hidden_act in GELU_TANH else None

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        h = op.gelu(self.dense_h_to_4h(x), approximate=self.gelu_approximate)
        if h.dtype != dtype:
            h = h.astype(dtype)
        h = self.dense_4h_to_h(h)
        if h.dtype != dtype:
            h = h.astype(dtype)
        return h


class GPTNeoXLayer(nn.Module):
    def __init__(self, config: GPTNeoXConfig, dtype: str, ffn_out_dtype: str) -> None:
        # Construction order is parameter order (params.py): norms, attention, MLP.
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, dtype=dtype)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, dtype=dtype)
        self.attention = GPTNeoXAttention(config, dtype)
        self.mlp = GPTNeoXMLP(config, dtype, ffn_out_dtype)
        self.use_parallel_residual = config.use_parallel_residual

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        attn = self.attention(self.input_layernorm(x), kv_cache, layer_id)
        if self.use_parallel_residual:  # Pythia: x + attn(ln1(x)) + mlp(ln2(x))
            return self.mlp(self.post_attention_layernorm(x)) + attn + x
        h = attn + x  # LINE, rinna: the MLP sees the attention block's output
        return self.mlp(self.post_attention_layernorm(h)) + h


class GPTNeoXModel(nn.Module):
    def __init__(self, config: GPTNeoXConfig, dtype: str, ffn_out_dtype: str) -> None:
        self.embed_in = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList([GPTNeoXLayer(config, dtype, ffn_out_dtype) for _ in range(config.num_hidden_layers)])
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, dtype=dtype)

    def forward(self, x: Tensor, kv_cache: PagedKVCache) -> Tensor:
        for layer_id, layer in enumerate(self.layers):
            x = layer(x, kv_cache, layer_id)
        return self.final_layer_norm(x)


def _last_position(x: Tensor) -> Tensor:
    """Hidden state of the last position: [b, s, h] -> [b, 1, h]."""

    def last(t: te.Tensor) -> te.Tensor:
        b, s, h = t.shape
        return te.compute((b, 1, h), lambda i, _, k: t[i, s - 1, k], name="index")

    return op.tensor_expr_op(last, name_hint="index", args=[x])


def _softmax_with_temperature(logits: te.Tensor, temperature: te.Tensor) -> te.Tensor:
    """Softmax of ``logits / t`` per row; a row with t <= 1e-5 gets a uniform distribution over its argmax.

    The greedy convention (probability 1/count on every maximal logit) is MLC's, so the engine's
    sampler picks the argmax when temperature is 0.
    """
    b, one, v = logits.shape
    eps = tirx.const(1e-5, "float32")
    scaled = te.compute(
        (b, one, v),
        lambda i, j, k: tirx.if_then_else(temperature[i] > eps, logits[i, j, k] / temperature[i], logits[i, j, k]),
        name="scaled",
    )
    r = te.reduce_axis((0, v), name="r")
    row_max = te.compute((b, one), lambda i, j: te.max(scaled[i, j, r], axis=r), name="row_max")
    weight = te.compute(
        (b, one, v),
        lambda i, j, k: tirx.if_then_else(
            temperature[i] > eps,
            te.exp(scaled[i, j, k] - row_max[i, j]),
            (scaled[i, j, k] == row_max[i, j]).astype("float32"),
        ),
        name="weight",
    )
    r2 = te.reduce_axis((0, v), name="r2")
    total = te.compute((b, one), lambda i, j: te.sum(weight[i, j, r2], axis=r2), name="total")
    return te.compute((b, one, v), lambda i, j, k: weight[i, j, k] / total[i, j], name="probs")


class GPTNeoXForCausalLM(nn.Module):
    """The compiled model: MLC's GPT-NeoX with the weights of ``quantization`` dequantized inside it."""

    def __init__(
        self,
        config: GPTNeoXConfig,
        quantization: Quantization | str,
        *,
        ffn_out_dtype: str = "float32",
    ) -> None:
        if isinstance(quantization, str):
            quantization = get_quantization(quantization)
        dtype = quantization.model_dtype
        self.config = config
        self.quantization = quantization
        self.dtype = dtype
        self.ffn_out_dtype = ffn_out_dtype
        self.gpt_neox = GPTNeoXModel(config, dtype, ffn_out_dtype)
        # Always a separate parameter, also for tied checkpoints (then a copy of embed_in): MLC's
        # layout, and the quantized embedding cannot serve as a matmul weight in the KN layout.
        self.embed_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype)
        quantize_model(self, quantization)

    # --- the functions the engine calls -------------------------------------------------------
    def _logits(self, hidden: Tensor) -> Tensor:
        logits = self.embed_out(hidden)
        return logits if logits.dtype == "float32" else logits.astype("float32")

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.gpt_neox.embed_in(input_ids)

    def prefill(self, input_embed: Tensor, paged_kv_cache: PagedKVCache) -> tuple[Tensor, PagedKVCache]:
        hidden = self.gpt_neox(input_embed, paged_kv_cache)
        return self._logits(_last_position(hidden)), paged_kv_cache

    def decode(self, input_embed: Tensor, paged_kv_cache: PagedKVCache) -> tuple[Tensor, PagedKVCache]:
        return self._logits(self.gpt_neox(input_embed, paged_kv_cache)), paged_kv_cache

    def batch_prefill(
        self, input_embeds: Tensor, logit_positions: Tensor, paged_kv_cache: PagedKVCache
    ) -> tuple[Tensor, PagedKVCache]:
        hidden = op.take(self.gpt_neox(input_embeds, paged_kv_cache), logit_positions, axis=1)
        return self._logits(hidden), paged_kv_cache

    def batch_decode(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache) -> tuple[Tensor, PagedKVCache]:
        return self._logits(self.gpt_neox(input_embeds, paged_kv_cache)), paged_kv_cache

    def batch_verify(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache) -> tuple[Tensor, PagedKVCache]:
        return self._logits(self.gpt_neox(input_embeds, paged_kv_cache)), paged_kv_cache

    def softmax_with_temperature(self, logits: Tensor, temperature: Tensor) -> Tensor:
        return op.tensor_expr_op(_softmax_with_temperature, name_hint="softmax_with_temperature", args=[logits, temperature])

    def create_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        """The paged KV cache with TIR attention kernels for the target being compiled for.

        Must run under ``with target:`` (as :func:`hf2mlc.compile.compile_model` does): the kernels
        differ between CPU and GPU targets.
        """
        target = Target.current(allow_none=True)
        if target is None:
            raise RuntimeError("create_paged_kv_cache must be exported inside `with tvm.target.Target(...)`")
        config = self.config
        return TIRPagedKVCache(
            attn_kind="mha",
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=rx.ShapeExpr([0, config.num_hidden_layers]),
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_attention_heads,
            qk_head_dim=config.head_dim,
            v_head_dim=config.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=ROPE_MODE,
            rope_scale=1,
            rope_theta=config.rotary_emb_base,
            rope_scaling={},
            rope_ext_factors=rx.prim_value(0),
            rotary_dim=config.rotary_dim,
            enable_disaggregation=False,
            dtype=self.dtype,
            target=target,
        )

    # --- export --------------------------------------------------------------------------------
    def get_default_spec(self) -> nn.spec.ModuleSpec:
        """Argument specs of every exported function, under the names the engine looks up."""
        hidden, dtype = self.config.hidden_size, self.dtype
        packed = {"param_mode": "packed", "effect_mode": "none"}
        kv = nn.spec.Object(object_type=PagedKVCache)
        raw: dict[str, Any] = {
            "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
            "prefill": {"input_embed": nn.spec.Tensor([1, "seq_len", hidden], dtype), "paged_kv_cache": kv, "$": packed},
            "decode": {"input_embed": nn.spec.Tensor([1, 1, hidden], dtype), "paged_kv_cache": kv, "$": packed},
            "batch_prefill": {
                "input_embeds": nn.spec.Tensor([1, "seq_len", hidden], dtype),
                "logit_positions": nn.spec.Tensor(["batch_size"], "int32"),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "batch_decode": {"input_embeds": nn.spec.Tensor(["batch_size", 1, hidden], dtype), "paged_kv_cache": kv, "$": packed},
            "batch_verify": {"input_embeds": nn.spec.Tensor([1, "seq_len", hidden], dtype), "paged_kv_cache": kv, "$": packed},
            "softmax_with_temperature": {
                "logits": nn.spec.Tensor(["batch_size", 1, "vocab_size"], "float32"),
                "temperature": nn.spec.Tensor(["batch_size"], "float32"),
                "$": {"param_mode": "none", "effect_mode": "none"},
            },
        }
        spec = nn.spec.ModuleSpec.from_raw(raw, self)
        kv_spec = nn.spec.MethodSpec.from_raw(
            {
                "max_batch_size": int,
                "max_total_seq_len": int,
                "prefill_chunk_size": int,
                "page_size": int,
                "support_sliding_window": int,
                "$": {"param_mode": "none", "effect_mode": "none"},
            },
            self.create_paged_kv_cache,
        )
        spec.method_names.append(KV_CACHE_FUNCTION)
        spec.method_specs.append(kv_spec)
        return spec

    def metadata(
        self,
        named_params: list[tuple[str, nn.Parameter]],
        *,
        context_window_size: int,
        prefill_chunk_size: int,
        max_batch_size: int = 1,
    ) -> dict[str, Any]:
        """The ``_metadata()`` JSON the engine reads (memory usage is added after memory planning)."""
        config = self.config
        return {
            "model_type": "gpt_neox",
            "quantization": self.quantization.name,
            "context_window_size": context_window_size,
            "sliding_window_size": -1,
            "attention_sink_size": -1,
            "prefill_chunk_size": prefill_chunk_size,
            "tensor_parallel_shards": 1,
            "pipeline_parallel_stages": 1,
            "disaggregation": False,
            "kv_state_kind": "kv_cache",
            "max_batch_size": max_batch_size,
            # Every embedding row is a token the tokenizer emits (no padded rows in GPT-NeoX configs).
            "active_vocab_size": config.vocab_size,
            "model_task": "chat",
            "kv_cache": {
                "num_hidden_layers": config.num_hidden_layers,
                "num_attention_heads": config.num_attention_heads,
                "num_key_value_heads": config.num_attention_heads,
                "head_dim": config.head_dim,
            },
            "params": [
                {
                    "name": name,
                    "shape": [int(s) if isinstance(s, int | tirx.IntImm) else str(s) for s in param.shape],
                    "dtype": str(param.dtype),
                    "preprocs": [],
                    "pipeline_stages": [0],
                }
                for name, param in named_params
            ],
        }
