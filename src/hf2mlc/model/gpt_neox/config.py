"""GPT-NeoX hyper-parameters read from a Hugging Face ``config.json``.

Hugging Face has written the same facts under two spellings: older checkpoints (LINE, rinna, Pythia)
carry ``rotary_pct`` and ``rotary_emb_base``; transformers 5 writes ``rope_parameters`` with
``partial_rotary_factor`` and ``rope_theta``.  Both are read here so that the rest of the package sees
one set of names, the ones MLC LLM's ``mlc-chat-config.json`` uses.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ...errors import UserError

#: Activation names GPT-NeoX checkpoints use; all are the exact (erf) GELU except ``gelu_new``/
#: ``gelu_fast``/``gelu_pytorch_tanh``, which are the tanh approximation.
GELU_EXACT = ("gelu",)
GELU_TANH = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")


@dataclasses.dataclass(frozen=True)
class GPTNeoXConfig:
    """The architecture options that change the computation or the parameter set."""

    hidden_size: int
    num_attention_heads: int
    num_hidden_layers: int
    intermediate_size: int
    vocab_size: int
    rotary_pct: float = 1.0
    rotary_emb_base: float = 10000.0
    use_parallel_residual: bool = True
    tie_word_embeddings: bool = False
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    max_position_embeddings: int = 2048
    attention_bias: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config.json") -> GPTNeoXConfig:
        """Build from a parsed ``config.json``; ``source`` names the file in error messages."""
        model_type = raw.get("model_type")
        if model_type != "gpt_neox":
            raise UserError(
                f"{source}: model_type is {model_type!r}, but hf2mlc builds GPT-NeoX models only "
                "(model_type 'gpt_neox'). Point the model's source at a GPT-NeoX checkpoint."
            )
        missing = [
            key
            for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size")
            if key not in raw
        ]
        if missing:
            raise UserError(f"{source}: missing {', '.join(missing)}; this is not a complete GPT-NeoX config.json.")
        check_types_and_ranges(raw, source)
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise UserError(
                f"{source}: rope type {rope_type!r} is not supported (only the default rotary embedding is)."
            )
        rotary_pct = raw.get("rotary_pct", rope.get("partial_rotary_factor", 1.0))
        rotary_base = raw.get("rotary_emb_base", rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
        act = raw.get("hidden_act", "gelu")
        if act not in GELU_EXACT + GELU_TANH:
            raise UserError(f"{source}: hidden_act {act!r} is not supported; expected one of {GELU_EXACT + GELU_TANH}.")
        config = cls(
            hidden_size=int(raw["hidden_size"]),
            num_attention_heads=int(raw["num_attention_heads"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            intermediate_size=int(raw["intermediate_size"]),
            vocab_size=int(raw["vocab_size"]),
            rotary_pct=float(rotary_pct),
            rotary_emb_base=float(rotary_base),
            use_parallel_residual=bool(raw.get("use_parallel_residual", True)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-5)),
            hidden_act=act,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            attention_bias=bool(raw.get("attention_bias", True)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=raw.get("eos_token_id"),
            pad_token_id=raw.get("pad_token_id"),
            torch_dtype=raw.get("torch_dtype", raw.get("dtype")),
        )
        if config.hidden_size % config.num_attention_heads:
            raise UserError(
                f"{source}: hidden_size {config.hidden_size} is not divisible by "
                f"num_attention_heads {config.num_attention_heads}."
            )
        if not config.attention_bias:
            raise UserError(f"{source}: attention_bias false is not supported (GPT-NeoX checkpoints have biases).")
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> GPTNeoXConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise UserError(f"{path}: not found; a Hugging Face model directory must contain config.json.")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err}).") from err
        return cls.from_dict(raw, source=str(path))

    def mlc_model_config(
        self, *, context_window_size: int, prefill_chunk_size: int, ffn_out_dtype: str = "float32", max_batch_size: int = 1
    ) -> dict[str, Any]:
        """The ``model_config`` block of mlc-chat-config.json: MLC's GPTNeoXConfig fields, in its order."""
        return {
            "use_parallel_residual": self.use_parallel_residual,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "layer_norm_eps": self.layer_norm_eps,
            "vocab_size": self.vocab_size,
            "rotary_pct": self.rotary_pct,
            "position_embedding_base": _int_if_whole(self.rotary_emb_base),
            "context_window_size": context_window_size,
            "head_dim": self.head_dim,
            "prefill_chunk_size": prefill_chunk_size,
            "tensor_parallel_shards": 1,
            "ffn_out_dtype": ffn_out_dtype,
            "max_batch_size": max_batch_size,
        }


_FIX = "fix config.json (compare it with the model's original on the Hub) and run again"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_types_and_ranges(raw: dict[str, Any], source: str) -> None:
    """Refuse values of the wrong type or out of range with one line, before any of them is used.

    Without this, ``hidden_size: "abc"`` is a ValueError deep in int(), ``num_attention_heads: 0`` a
    ZeroDivisionError, ``eos_token_id: "2"`` a crash of the chat loop, all far from the file to fix.
    """
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size",
                "max_position_embeddings"):
        if key in raw and not (_is_int(raw[key]) and raw[key] >= 1):
            raise UserError(f"{source}: {key} is {raw[key]!r}, but it must be a whole number of at least 1; {_FIX}.")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise UserError(f"{source}: rope_parameters is {rope!r}, but it must be an object; {_FIX}.")
    ranges = {
        "rotary_pct": (raw.get("rotary_pct", rope.get("partial_rotary_factor", 1.0)), "a number in (0, 1]",
                       lambda v: 0 < v <= 1),
        "rotary_emb_base": (raw.get("rotary_emb_base", rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
                            "a positive number", lambda v: v > 0),
        "layer_norm_eps": (raw.get("layer_norm_eps", 1e-5), "a positive number", lambda v: v > 0),
    }
    for key, (value, expected, ok) in ranges.items():
        if not (_is_number(value) and ok(value)):
            raise UserError(f"{source}: {key} is {value!r}, but it must be {expected}; {_FIX}.")
    for key in ("use_parallel_residual", "tie_word_embeddings", "attention_bias"):
        if key in raw and not isinstance(raw[key], bool):
            raise UserError(f"{source}: {key} is {raw[key]!r}, but it must be true or false; {_FIX}.")
    vocab = raw["vocab_size"]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = raw.get(key)
        ids = value if key == "eos_token_id" and isinstance(value, list) and value else [value]
        if value is not None and not all(_is_int(v) and 0 <= v < vocab for v in ids):
            allowed = "a token id (or, for eos_token_id, a list of them)"
            raise UserError(
                f"{source}: {key} is {value!r}, but it must be {allowed} from 0 to vocab_size - 1 = {vocab - 1}; {_FIX}."
            )


def _int_if_whole(value: float) -> int | float:
    """MLC writes integral floats (rope bases) as JSON integers; do the same for byte-identical configs."""
    return int(value) if float(value).is_integer() else value
