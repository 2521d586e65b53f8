"""Run a compiled model library on this machine the way MLC LLM's engine runs it.

:class:`Engine` loads a library and a weights directory (``tensor-cache.json`` + shards) with the
same runtime calls as MLC's engine (``vm.builtin.tensor_cache.load``, then
``vm.builtin.param_array_from_cache_by_name`` with the names in the library's ``_metadata()``),
creates the paged KV cache through the library's ``create_tir_paged_kv_cache``, and drives it with
the ``vm.builtin.kv_state_*`` calls around each ``prefill``/``decode``.  The workflow's check (logits
against transformers), its evaluation (perplexity) and ``hf2mlc chat`` run host libraries with it, so it keeps
the library's limits: at most ``prefill_chunk_size`` tokens per call (longer prompts are prefilled in
chunks) and at most ``context_window_size`` tokens in the cache.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.runtime import ShapeTuple

from .errors import UserError
from .model.gpt_neox.model import KV_CACHE_FUNCTION
from .tensor_cache import check_library_params

#: Tokens per KV-cache page (MLC's engine uses 16).
PAGE_SIZE = 16
_SEQ_ID = 0


def _global(name: str) -> Any:
    return tvm.get_global_func(name)


class Engine:
    """One sequence on a compiled model library: prefill, decode, generate, logits of a whole text."""

    def __init__(self, lib_path: str | Path, weights_dir: str | Path, *, device: str = "cpu") -> None:
        lib_path, weights_dir = Path(lib_path), Path(weights_dir)
        if not lib_path.is_file():
            raise UserError(f"{lib_path}: model library not found; build it first (hf2mlc.compile).")
        self.device = tvm.device(device)
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), self.device)
        self.metadata: dict[str, Any] = json.loads(str(self.vm["_metadata"]()))
        check_library_params(weights_dir, self.metadata["params"], lib_path.name)
        _global("vm.builtin.tensor_cache.load")(str(weights_dir), self.device.dlpack_device_type(), self.device.index)
        names = [p["name"] for p in self.metadata["params"]]
        self.params = _global("vm.builtin.param_array_from_cache_by_name")(names)
        _global("vm.builtin.tensor_cache.clear")()
        self.context_window_size = int(self.metadata["context_window_size"])
        self.prefill_chunk_size = int(self.metadata["prefill_chunk_size"])
        self.kv_cache = self.vm[KV_CACHE_FUNCTION](
            ShapeTuple([1]),
            ShapeTuple([self.context_window_size]),
            ShapeTuple([self.prefill_chunk_size]),
            ShapeTuple([PAGE_SIZE]),
            ShapeTuple([0]),
        )
        self._begin = _global("vm.builtin.kv_state_begin_forward")
        self._end = _global("vm.builtin.kv_state_end_forward")
        self._add_sequence = _global("vm.builtin.kv_state_add_sequence")
        self._clear = _global("vm.builtin.kv_state_clear")
        self.num_tokens = 0
        self._add_sequence(self.kv_cache, _SEQ_ID)

    # --- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the conversation: empty the KV cache and start a new sequence."""
        self._clear(self.kv_cache)
        self._add_sequence(self.kv_cache, _SEQ_ID)
        self.num_tokens = 0

    @property
    def tokens_left(self) -> int:
        return self.context_window_size - self.num_tokens

    def _reserve(self, count: int) -> None:
        if count > self.tokens_left:
            raise UserError(
                f"{self.num_tokens} tokens are in the context and {count} more do not fit the library's "
                f"context_window_size of {self.context_window_size}; shorten the input or build the library "
                "with a larger context_window_size (config/config.yaml)."
            )

    # --- forward passes ------------------------------------------------------------------------
    def _embed(self, token_ids: np.ndarray) -> tvm.runtime.Tensor:
        ids = tvm.runtime.tensor(token_ids.astype("int32"), self.device)
        embed = self.vm["embed"](ids, self.params)
        return embed._create_view(ShapeTuple([1, len(token_ids), int(embed.shape[-1])]))

    def _forward(self, function: str, token_ids: np.ndarray) -> np.ndarray:
        """One call of ``function`` on ``token_ids`` (at most one chunk), framed by begin/end_forward."""
        embed = self._embed(token_ids)
        self._begin(self.kv_cache, ShapeTuple([_SEQ_ID]), ShapeTuple([len(token_ids)]))
        logits, self.kv_cache = self.vm[function](embed, self.kv_cache, self.params)
        self._end(self.kv_cache)
        self.num_tokens += len(token_ids)
        return logits.numpy()

    def _chunks(self, token_ids: Iterable[int]) -> list[np.ndarray]:
        ids = np.asarray(list(token_ids), dtype="int32")
        if ids.size == 0:
            raise ValueError("no tokens to run")
        self._reserve(int(ids.size))
        return [ids[i : i + self.prefill_chunk_size] for i in range(0, ids.size, self.prefill_chunk_size)]

    def prefill(self, token_ids: Iterable[int]) -> np.ndarray:
        """Append ``token_ids`` to the context; return the float32 logits [vocab] after the last one.

        Prompts longer than the library's ``prefill_chunk_size`` are prefilled chunk by chunk (as
        MLC's engine does): one call per chunk, each attending to everything before it.
        """
        logits = None
        for chunk in self._chunks(token_ids):
            logits = self._forward("prefill", chunk)
        assert logits is not None
        return logits[0, -1]

    def decode(self, token_id: int) -> np.ndarray:
        """Append one token; return the float32 logits [vocab] for the next position."""
        self._reserve(1)
        embed = self._embed(np.asarray([token_id], dtype="int32"))
        self._begin(self.kv_cache, ShapeTuple([_SEQ_ID]), ShapeTuple([1]))
        logits, self.kv_cache = self.vm["decode"](embed, self.kv_cache, self.params)
        self._end(self.kv_cache)
        self.num_tokens += 1
        return logits.numpy()[0, -1]

    def logits_all(self, token_ids: Iterable[int]) -> np.ndarray:
        """Float32 logits [n, vocab] at every position of ``token_ids``, appended to the context.

        Uses ``batch_verify`` (logits for all positions of one forward pass), chunked by
        ``prefill_chunk_size``; row ``i`` predicts token ``i + 1``: what perplexity needs.
        """
        return np.concatenate([self._forward("batch_verify", chunk)[0] for chunk in self._chunks(token_ids)], axis=0)

    # --- sampling ------------------------------------------------------------------------------
    def _softmax(self, logits: np.ndarray, temperature: float) -> tvm.runtime.Tensor:
        """The library's ``softmax_with_temperature`` (what MLC's sampler calls) on one row of logits."""
        row = tvm.runtime.tensor(logits.reshape(1, 1, -1).astype("float32"), self.device)
        temp = tvm.runtime.tensor(np.asarray([temperature], dtype="float32"), self.device)
        return self.vm["softmax_with_temperature"](row, temp)

    def probabilities(self, logits: np.ndarray, temperature: float) -> np.ndarray:
        """softmax(logits / temperature) [vocab] as the library computes it (temperature 0: argmax)."""
        return self._softmax(logits, temperature).numpy().reshape(-1)

    def sample(self, logits: np.ndarray, *, temperature: float, top_p: float, rng: np.random.Generator) -> int:
        """The next token: argmax for temperature 0, else top-p sampling from softmax(logits / t)."""
        if temperature <= 0:
            return int(np.argmax(logits))
        probs = self._softmax(logits, temperature)
        flat = probs._create_view(ShapeTuple([int(logits.shape[-1])]))
        if self.device.dlpack_device_type() != 1:  # the sampler reads host memory
            flat = tvm.runtime.tensor(flat.numpy())
        return int(_global("vm.builtin.sample_top_p_from_prob")(flat, float(top_p), float(rng.random())))

    def generate(
        self,
        prompt_ids: Iterable[int],
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop_token_ids: Iterable[int] = (),
        seed: int | None = None,
    ) -> list[int]:
        """Generate up to ``max_new_tokens`` after ``prompt_ids`` (from an empty context).

        Stops after a token in ``stop_token_ids`` (which is included in the result) or when the
        context window is full.  Same ``seed``, same output.
        """
        if not 0.0 < top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1], got {top_p}.")
        if temperature < 0:
            raise UserError(f"temperature must be >= 0, got {temperature}.")
        rng = np.random.default_rng(seed)
        stops = set(int(t) for t in stop_token_ids)
        self.reset()
        logits = self.prefill(prompt_ids)
        out: list[int] = []
        while len(out) < max_new_tokens:
            token = self.sample(logits, temperature=temperature, top_p=top_p, rng=rng)
            out.append(token)
            if token in stops or len(out) == max_new_tokens or self.tokens_left == 0:
                break
            logits = self.decode(token)
        return out
