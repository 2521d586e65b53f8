"""Tiny random GPT-NeoX checkpoints, saved as Hugging Face model directories (config.json + safetensors).

Each variant exercises one family of real checkpoints:

* ``line``      sequential residual, tied embeddings (no ``embed_out.weight`` on disk), full rotary,
  exact GELU, and a config.json in the legacy spelling (``rotary_pct``/``rotary_emb_base``) that
  LINE's and rinna's checkpoints use;
* ``pythia``    parallel residual, rotary over a quarter of each head, untied embeddings, the
  transformers-5 spelling (``rope_parameters``), a non-default layer-norm epsilon and rope base;
* ``gelu_tanh`` sequential residual, untied, ``hidden_act: gelu_new`` (the tanh approximation),
  half rotary.

Every parameter is random (also norms and biases, which transformers would initialise to 1 and 0), so
that a wrong bias layout, norm or rotary split shows up as a large error rather than hiding behind
zeros.  By default every value is also exactly representable in bfloat16: MLC's weight format stores
float32 tensors as bfloat16 ("f32-to-bf16"), so with such weights a float32 build sees exactly the
checkpoint's numbers and can be held to float32 accuracy against transformers.
Usable from any test: ``make_tiny_model(tmp_path / "m", "line")``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    "line": {
        "use_parallel_residual": False,
        "tie_word_embeddings": True,
        "rotary_pct": 1.0,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "rotary_emb_base": 10000.0,
        "legacy_config": True,
    },
    "pythia": {
        "use_parallel_residual": True,
        "tie_word_embeddings": False,
        "rotary_pct": 0.25,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "rotary_emb_base": 5000.0,
        "legacy_config": False,
    },
    "gelu_tanh": {
        "use_parallel_residual": False,
        "tie_word_embeddings": False,
        "rotary_pct": 0.5,
        "hidden_act": "gelu_new",
        "layer_norm_eps": 1e-5,
        "rotary_emb_base": 10000.0,
        "legacy_config": False,
    },
}

#: Small enough to compile in seconds, large enough for two quantization groups of 32 per row.
TINY_SHAPE = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "intermediate_size": 256,
    "vocab_size": 128,
    "max_position_embeddings": 128,
}


def make_tiny_model(
    out_dir: Path,
    variant: str = "line",
    *,
    seed: int = 0,
    dtype: str = "float32",
    bf16_representable: bool = True,
    **shape: int,
) -> Path:
    """Write a random ``variant`` checkpoint to ``out_dir`` and return ``out_dir``.

    ``shape`` overrides entries of :data:`TINY_SHAPE`; ``dtype`` is the dtype stored on disk.
    """
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    spec = dict(VARIANTS[variant])
    legacy = spec.pop("legacy_config")
    rotary_pct = spec.pop("rotary_pct")
    base = spec.pop("rotary_emb_base")
    config = GPTNeoXConfig(
        **{**TINY_SHAPE, **shape},
        **spec,
        rope_parameters={"rope_type": "default", "rope_theta": base, "partial_rotary_factor": rotary_pct},
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name or "layer_norm" in name:
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(param))
            else:
                param.copy_(0.15 * torch.randn_like(param))
            if bf16_representable:
                param.copy_(param.to(torch.bfloat16).to(param.dtype))
    model = model.to(getattr(torch, dtype))
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    if legacy:
        _rewrite_legacy_config(out_dir / "config.json", rotary_pct=rotary_pct, base=base)
    return out_dir


def _rewrite_legacy_config(path: Path, *, rotary_pct: float, base: float) -> None:
    """Spell the rotary settings as pre-5 checkpoints (LINE, rinna, Pythia on the Hub) do."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw.pop("rope_parameters", None)
    raw["rotary_pct"] = rotary_pct
    raw["rotary_emb_base"] = int(base) if float(base).is_integer() else base
    path.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")


def load_reference(model_dir: Path):
    """The checkpoint as a float32 transformers model in eval mode (the independent reference)."""
    import torch
    from transformers import GPTNeoXForCausalLM

    return GPTNeoXForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def reference_logits(model, token_ids: list[int]):
    """float32 logits of every position of ``token_ids`` from a transformers model, as numpy [n, vocab]."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([token_ids], dtype=torch.long))
    return out.logits[0].float().numpy()


def add_char_tokenizer(model_dir: Path, texts: list[str], vocab_size: int) -> None:
    """A character-level tokenizer.json (ids 0-2: <unk>, <s>, </s>) over the characters of ``texts``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = sorted(set("".join(texts)))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars[: vocab_size - 3])}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.save(str(Path(model_dir) / "tokenizer.json"))
