"""End to end on the host: checkpoint -> convert_weights -> compiled library -> Engine -> logits.

The reference is transformers' own GPTNeoXForCausalLM in float32 on the same checkpoint (tiny random
models of each architecture variant, tests/tiny_models.py).  For group-quantized builds the reference
model gets the *converted* weights: read back from tensor-cache.json, dequantized with numpy and
un-reordered to Hugging Face's layout (hf2mlc.check.dequantized_reference, the workflow check's own
reference, so it is tested here too), which isolates the compiled model from the (deliberate)
quantization error.

Relative error = max |logits - reference| / max |reference|, per position.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from tvm.runtime import ShapeTuple

import hf2mlc
from hf2mlc.check import dequantized_reference
from hf2mlc.compile import compile_model
from hf2mlc.convert import convert_weights
from hf2mlc.errors import UserError
from hf2mlc.model.gpt_neox.config import GPTNeoXConfig
from hf2mlc.model.gpt_neox.params import param_specs
from hf2mlc.quantization import Quantization, get_quantization
from hf2mlc.quantization.group import dequantize
from hf2mlc.runtime import Engine
from hf2mlc.spec import TargetSpec
from hf2mlc.tensor_cache import read_tensor_cache
from tiny_models import add_char_tokenizer, load_reference, make_tiny_model, reference_logits

DATA = Path(hf2mlc.__file__).with_name("data")

CONTEXT = 32
CHUNK = 8
PROMPT = [5, 17, 99, 3, 42, 7, 64]
CONTINUATION = [11, 120, 0]
#: Every build the tests below use: (variant, quantization, ffn_out_dtype) -> relative-error bound.
BUILDS = {
    ("line", "q0f32", "float32"): 1e-4,
    ("pythia", "q0f32", "float32"): 1e-4,
    ("gelu_tanh", "q0f32", "float32"): 1e-4,
    ("line", "q0f16", "float16"): 2e-2,  # the write-up's Mac build: MLP in float16 too
    ("pythia", "q0f16", "float32"): 2e-2,
    ("line", "q4f16_0", "float16"): 2e-2,  # the write-up's iPhone build
    ("pythia", "q4f16_0", "float32"): 2e-2,
    ("gelu_tanh", "q4f16_1", "float32"): 2e-2,
    ("line", "q3f16_0", "float16"): 2e-2,  # 3-bit, KN; hidden 64 and ffn 256 leave ragged groups of 40
}


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


class _Builds:
    """Tiny checkpoints, converted weights and host libraries, each made once per module."""

    def __init__(self, root) -> None:
        self.root = root
        self._models: dict[str, object] = {}
        self._built: dict[tuple[str, str, str], tuple] = {}

    def model_dir(self, variant: str):
        if variant not in self._models:
            self._models[variant] = make_tiny_model(self.root / f"hf-{variant}", variant)
        return self._models[variant]

    def get(self, variant: str, quantization: str, ffn_out_dtype: str = "float32"):
        key = (variant, quantization, ffn_out_dtype)
        if key not in self._built:
            model_dir = self.model_dir(variant)
            name = f"{variant}-{quantization}-{ffn_out_dtype}"
            weights = self.root / f"w-{name}"
            convert_weights(model_dir, weights, quantization, ffn_out_dtype=ffn_out_dtype, progress=False)
            config = GPTNeoXConfig.from_file(model_dir)
            spec = TargetSpec.create(target="host", quantization=quantization, lib_name=name,
                                     context_window_size=CONTEXT, prefill_chunk_size=CHUNK, ffn_out_dtype=ffn_out_dtype)
            info = compile_model(config, spec, self.root / "libs", progress=False)
            self._built[key] = (model_dir, weights, self.root / "libs" / info["files"][0], config)
        return self._built[key]

    def engine(self, variant: str, quantization: str, ffn_out_dtype: str = "float32") -> Engine:
        _model_dir, weights, lib, _config = self.get(variant, quantization, ffn_out_dtype)
        return Engine(lib, weights)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return _Builds(tmp_path_factory.mktemp("runtime"))


def _hf_rows(mlc_rows: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo the converter's qkv reorder: rows [(q|k|v), head, d] -> Hugging Face's [head, (q|k|v), d]."""
    shape = mlc_rows.shape
    head_dim = shape[0] // (3 * num_heads)
    return np.ascontiguousarray(mlc_rows.reshape(3, num_heads, head_dim, *shape[1:]).swapaxes(0, 1)).reshape(shape)


def _dequantized_reference(model_dir, weights_dir, config: GPTNeoXConfig, q: Quantization, *, calibrated: bool = False):
    """A float32 transformers model carrying exactly the weights the library reads."""
    cache = read_tensor_cache(weights_dir)
    in_features = {"dense_4h_to_h": config.intermediate_size}
    state: dict[str, np.ndarray] = {}
    for name, array in cache.items():
        if name.endswith(".q_scale"):
            continue
        if name.endswith(".q_weight"):
            base = name[: -len(".q_weight")]
            scale = cache[f"{base}.q_scale"]
            if base == "gpt_neox.embed_in":
                weight = dequantize(array, scale, q, axis=1, size=config.hidden_size)
            else:
                k = in_features.get(base.rsplit(".", 1)[-1], config.hidden_size)
                if q.linear_weight_layout == "KN":
                    weight = dequantize(array, scale, q, axis=0, size=k).T
                else:
                    weight = dequantize(array, scale, q, axis=1, size=k)
            name, array = f"{base}.weight", weight
        array = np.asarray(array, dtype=np.float32)
        if ".query_key_value." in name:
            array = _hf_rows(array, config.num_attention_heads)
        state[name] = array
    head = state.pop("embed_out.weight")
    model = load_reference(model_dir)
    if config.tie_word_embeddings and calibrated:  # the head was calibrated apart from the embedding: untie
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(torch.from_numpy(head.copy()))
    elif config.tie_word_embeddings:  # the library's embed_out is a quantized copy of embed_in: same numbers
        np.testing.assert_array_equal(head, state["gpt_neox.embed_in.weight"])
    else:
        state["lm_head.weight"] = head  # transformers 5 calls GPT-NeoX's embed_out "lm_head"
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing  # tied: shares embed_in
    return model


def _reference(builds: _Builds, variant: str, quantization: str, ffn_out_dtype: str):
    """transformers in float32 holding the numbers the library reads: for a quantized build, the library's
    own dequantized reference (hf2mlc.check, what the workflow's check compares against)."""
    model_dir, weights, _lib, _config = builds.get(variant, quantization, ffn_out_dtype)
    if get_quantization(quantization).is_quantized:
        return dequantized_reference(model_dir, weights, quantization)
    return load_reference(model_dir)


# ---------------------------------------------------------------- logits against transformers


@pytest.mark.parametrize(("variant", "quantization", "ffn_out_dtype"), list(BUILDS))
def test_prefill_then_decode_matches_transformers(builds, variant, quantization, ffn_out_dtype):
    bound = BUILDS[(variant, quantization, ffn_out_dtype)]
    engine = builds.engine(variant, quantization, ffn_out_dtype)
    want = reference_logits(_reference(builds, variant, quantization, ffn_out_dtype), PROMPT + CONTINUATION)
    got = [engine.prefill(PROMPT)] + [engine.decode(t) for t in CONTINUATION]
    errors = [_rel(g, want[len(PROMPT) - 1 + i]) for i, g in enumerate(got)]
    print(f"{variant} {quantization} ffn={ffn_out_dtype}: relative errors {['%.2e' % e for e in errors]}")
    assert max(errors) <= bound, errors
    assert all(g.dtype == np.float32 and g.shape == (128,) for g in got)
    assert engine.num_tokens == len(PROMPT) + len(CONTINUATION)


def test_calibrated_weights_run_on_the_unchanged_library(builds, tmp_path):
    """A calibrated q3 bundle (AWQ folded into the norms, GPTQ codes, the top code used) on the RTN build's library."""
    model_dir, _rtn_weights, lib, config = builds.get("line", "q3f16_0", "float16")
    text = DATA.joinpath("tokenizer_cases_ja.txt").read_text(encoding="utf-8")
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("\n\n".join(line for line in text.splitlines() if line.startswith('"')), encoding="utf-8")
    if not (model_dir / "tokenizer.json").exists():
        add_char_tokenizer(model_dir, [text], config.vocab_size)
    weights = tmp_path / "weights"
    stats = convert_weights(model_dir, weights, "q3f16_0", method="awq_gptq", calibration_text=str(calibration),
                            calibration_tokens=256, ffn_out_dtype="float16", progress=False)
    assert stats["method"] == "awq_gptq" and stats["calibration"]["tokens"] == 256
    q = get_quantization("q3f16_0")
    engine = Engine(lib, weights)
    want = reference_logits(_dequantized_reference(model_dir, weights, config, q, calibrated=True), PROMPT + CONTINUATION)
    got = [engine.prefill(PROMPT)] + [engine.decode(t) for t in CONTINUATION]
    errors = [_rel(g, want[len(PROMPT) - 1 + i]) for i, g in enumerate(got)]
    print(f"line q3f16_0 awq_gptq: relative errors {['%.2e' % e for e in errors]}")
    assert max(errors) <= BUILDS[("line", "q3f16_0", "float16")], errors
    top = (1 << q.bits) - 1
    words = read_tensor_cache(weights)["gpt_neox.layers.0.mlp.dense_4h_to_h.q_weight"]
    assert any(((words >> np.uint32(3 * r)) & np.uint32(7) == top).any() for r in range(10))  # code 7 = +4 scale


def test_chunked_prefill_and_all_position_logits(builds):
    engine = builds.engine("pythia", "q0f32")
    tokens = [(7 * i + 3) % 128 for i in range(21)]  # 21 tokens: chunks of 8, 8 and 5
    want = reference_logits(_reference(builds, "pythia", "q0f32", "float32"), tokens)
    assert _rel(engine.prefill(tokens), want[-1]) <= 1e-4
    assert engine.num_tokens == 21
    engine.reset()
    every = engine.logits_all(tokens)
    assert every.shape == (21, 128)
    errors = [_rel(every[i], want[i]) for i in range(21)]
    assert max(errors) <= 1e-4, errors
    # a continuation after chunked prefill attends to all earlier chunks
    assert _rel(engine.decode(5), reference_logits(_reference(builds, "pythia", "q0f32", "float32"), tokens + [5])[-1]) <= 1e-4


def test_context_window_is_enforced(builds):
    engine = builds.engine("line", "q0f32")
    engine.prefill(list(range(30)))
    engine.decode(1)
    engine.decode(2)
    assert engine.tokens_left == 0
    with pytest.raises(UserError, match=r"32 tokens are in the context.*context_window_size of 32"):
        engine.decode(3)
    engine.reset()
    with pytest.raises(UserError, match=r"context_window_size"):
        engine.prefill(list(range(CONTEXT + 1)))
    assert engine.num_tokens == 0  # nothing was run
    # generate stops when the window is full: 28 prompt tokens leave room to feed 4 more
    out = engine.generate(list(range(28)), 50)
    assert len(out) == 5 and engine.num_tokens == CONTEXT


def test_reset_starts_a_fresh_sequence(builds):
    engine = builds.engine("gelu_tanh", "q0f32")
    first = engine.prefill(PROMPT)
    engine.decode(9)
    engine.reset()
    np.testing.assert_array_equal(engine.prefill(PROMPT), first)


def test_batch_functions_agree_with_single_sequence_ones(builds):
    """batch_prefill / batch_decode (what MLC's engine calls) give the logits prefill / decode give."""
    engine = builds.engine("pythia", "q4f16_0")
    expected = [engine.prefill(PROMPT), engine.decode(CONTINUATION[0])]
    engine.reset()
    vm, begin, end = engine.vm, engine._begin, engine._end
    embed = engine._embed(np.asarray(PROMPT, dtype="int32"))
    positions = tvm.runtime.tensor(np.asarray([len(PROMPT) - 3, len(PROMPT) - 1], dtype="int32"))
    begin(engine.kv_cache, ShapeTuple([0]), ShapeTuple([len(PROMPT)]))
    logits, engine.kv_cache = vm["batch_prefill"](embed, positions, engine.kv_cache, engine.params)
    end(engine.kv_cache)
    logits = logits.numpy()
    assert logits.shape == (1, 2, 128)
    assert _rel(logits[0, 1], expected[0]) <= 1e-5
    # position len-3 predicts the token after PROMPT[-3]: same as a prefill of the shorter prompt
    shorter = builds.engine("pythia", "q4f16_0").prefill(PROMPT[:-2])
    assert _rel(logits[0, 0], shorter) <= 1e-5
    embed = engine._embed(np.asarray(CONTINUATION[:1], dtype="int32"))
    begin(engine.kv_cache, ShapeTuple([0]), ShapeTuple([1]))
    logits, engine.kv_cache = vm["batch_decode"](embed, engine.kv_cache, engine.params)
    end(engine.kv_cache)
    assert logits.numpy().shape == (1, 1, 128)
    assert _rel(logits.numpy()[0, 0], expected[1]) <= 1e-5


# ---------------------------------------------------------------- generation and sampling


def test_greedy_generation_matches_transformers_argmax(builds):
    engine = builds.engine("pythia", "q0f32")
    reference = _reference(builds, "pythia", "q0f32", "float32")
    tokens = list(PROMPT)
    for _ in range(10):
        tokens.append(int(np.argmax(reference_logits(reference, tokens)[-1])))
    assert engine.generate(PROMPT, 10) == tokens[len(PROMPT) :]
    # a stop token ends generation at its first occurrence and is returned
    generated = tokens[len(PROMPT) :]
    stop = generated[3]
    assert engine.generate(PROMPT, 10, stop_token_ids=[stop]) == generated[: generated.index(stop) + 1]


def test_softmax_with_temperature_matches_numpy(builds):
    engine = builds.engine("line", "q0f32")
    logits = engine.prefill(PROMPT)
    for t in (0.7, 1.0, 2.5):
        want = np.exp(logits / t - np.max(logits / t))
        want /= want.sum()
        got = engine.probabilities(logits, t)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    greedy = engine.probabilities(logits, 0.0)
    assert greedy[np.argmax(logits)] == 1.0 and greedy.sum() == 1.0


def test_top_p_sampling_draws_from_the_nucleus_with_the_right_frequencies(builds):
    engine = builds.engine("line", "q0f32")
    logits = engine.prefill(PROMPT)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    rng = np.random.default_rng(0)
    draws = np.array([engine.sample(logits, temperature=1.0, top_p=1.0, rng=rng) for _ in range(3000)])
    freq = np.bincount(draws, minlength=128) / len(draws)
    assert np.max(np.abs(freq - probs)) < 0.03, np.max(np.abs(freq - probs))
    # top_p: only the smallest set of most likely tokens whose mass reaches p is ever drawn
    order = np.argsort(-probs)
    nucleus = set(order[: int(np.searchsorted(np.cumsum(probs[order]), 0.5)) + 1].tolist())
    drawn = {engine.sample(logits, temperature=1.0, top_p=0.5, rng=rng) for _ in range(500)}
    assert drawn <= nucleus and len(drawn) > 1


def test_sampled_generation_is_reproducible_by_seed(builds):
    engine = builds.engine("line", "q0f32")
    a = engine.generate(PROMPT, 12, temperature=1.2, top_p=0.95, seed=123)
    b = engine.generate(PROMPT, 12, temperature=1.2, top_p=0.95, seed=123)
    c = engine.generate(PROMPT, 12, temperature=1.2, top_p=0.95, seed=7)
    assert a == b and len(a) == 12
    assert a != c
    with pytest.raises(UserError, match="top_p"):
        engine.generate(PROMPT, 3, temperature=1.0, top_p=0.0)


# ---------------------------------------------------------------- functions MLC's engine requires


def _t(array) -> tvm.runtime.Tensor:
    return tvm.runtime.tensor(np.ascontiguousarray(array))


def _engine_functions(engine: Engine):
    """Look functions up as MLC's engine does: by name, through the library's imports too."""
    return lambda name: engine.vm.module.get_function(name, True)


def test_engine_logit_processing_functions_match_numpy(builds):
    fn = _engine_functions(builds.engine("line", "q0f32"))
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 128)).astype("float32")
    # bias: (row, token, bias) for 4 entries, one token twice
    pos2seq, tokens, bias = np.array([0, 2, 2, 1], "int32"), np.array([5, 7, 7, 127], "int32"), np.array([1.5, -2, 0.25, 3], "float32")
    got = _t(logits)
    fn("apply_logit_bias_inplace")(got, _t(pos2seq), _t(tokens), _t(bias))
    want = logits.copy()
    np.add.at(want, (pos2seq, tokens), bias)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    # penalties (presence, frequency, repetition) per sequence; seq_ids map sequences to logit rows
    seq_ids, penalties = np.array([2, 0], "int32"), np.array([[0.5, 0.1, 1.3], [0.0, 0.2, 2.0]], "float32")
    pos2seq, tokens, counts = np.array([0, 0, 1], "int32"), np.array([3, 9, 3], "int32"), np.array([1, 4, 2], "int32")
    got = _t(logits)
    fn("apply_penalty_inplace")(got, _t(seq_ids), _t(pos2seq), _t(tokens), _t(counts), _t(penalties))
    want = logits.copy()
    for s, t, c in zip(pos2seq, tokens, counts, strict=True):
        value = want[seq_ids[s], t] - (penalties[s, 0] + c * penalties[s, 1])
        want[seq_ids[s], t] = value * penalties[s, 2] if value < 0 else value / penalties[s, 2]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    # bitmask: bit t of row r allows token t; masked tokens get the lowest float32
    allowed = rng.random((3, 128)) < 0.3
    words = np.packbits(allowed.reshape(3, 4, 32)[:, :, ::-1], axis=-1, bitorder="big").view(">u4").astype("uint32")
    bitmask = words.reshape(3, 4).view("int32")
    got = _t(logits)
    fn("apply_bitmask_inplace")(got, _t(np.array([1, 2], "int32")), _t(bitmask))
    want = logits.copy()
    for row in (1, 2):
        want[row][~allowed[row]] = np.finfo("float32").min
    np.testing.assert_array_equal(got.numpy(), want)


def test_engine_sampling_functions_match_numpy(builds):
    fn = _engine_functions(builds.engine("line", "q0f32"))
    rng = np.random.default_rng(4)
    probs = rng.random((2, 128)).astype("float32") ** 4
    probs /= probs.sum(axis=1, keepdims=True)
    values, indices = (x.numpy() for x in fn("argsort_probs")(_t(probs)))
    order = np.argsort(-probs, axis=1, kind="stable")
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_array_equal(values, np.take_along_axis(probs, order, axis=1))

    cumsum = np.cumsum(probs, axis=1, dtype=np.float64)
    rows = np.array([0, 1, 1, 0], "int32")
    # uniform draws in the middle of a token's CDF interval, so float rounding cannot move them
    picks = np.array([3, 77, 120, 64])
    uniform = ((cumsum[rows, picks] - probs[rows, picks] / 2)).astype("float32")
    tokens = fn("multinomial_from_uniform")(_t(probs), _t(uniform), _t(rows)).numpy()
    np.testing.assert_array_equal(tokens, picks)

    top_p = np.array([0.5, 0.9], "float32")
    sorted_cumsum = np.cumsum(values, axis=1, dtype=np.float64)
    nucleus = [int(np.searchsorted(sorted_cumsum[r], top_p[r])) + 1 for r in range(2)]  # sizes
    ranks = np.array([0, nucleus[1] - 1, 1, nucleus[0] - 1])
    renorm = sorted_cumsum[rows, np.array(nucleus)[rows] - 1]
    uniform = ((sorted_cumsum[rows, ranks] - values[rows, ranks] / 2) / renorm).astype("float32")
    tokens = fn("sample_with_top_p")(_t(values), _t(indices), _t(uniform), _t(rows), _t(top_p)).numpy()
    np.testing.assert_array_equal(tokens, indices[rows, ranks])

    renormed = fn("renormalize_by_top_p")(_t(probs), _t(top_p), _t(np.zeros((2, 3), "float32"))).numpy()
    for r in range(2):
        keep = np.zeros(128, bool)
        keep[order[r, : nucleus[r]]] = True
        want = np.where(keep, probs[r], 0) / probs[r][keep].sum()
        np.testing.assert_allclose(renormed[r], want, rtol=1e-5, atol=1e-7)

    offsets = np.array([0, 1, 128 + 0, 128 + 5], "int32")  # (row, rank) as row * vocab + rank
    sampled, top_probs, top_ids = (
        x.numpy() for x in fn("sampler_take_probs")(_t(probs), _t(indices), _t(rows), _t(tokens), _t(offsets))
    )
    np.testing.assert_array_equal(sampled, probs[rows, tokens])
    np.testing.assert_array_equal(top_ids, indices[offsets // 128, offsets % 128])
    np.testing.assert_array_equal(top_probs, probs[offsets // 128, top_ids])

    buffer = fn("alloc_embedding_tensor")()
    assert tuple(buffer.shape) == (CHUNK, 64) and buffer.dtype == "float32"


# ---------------------------------------------------------------- the library and its weights


def test_library_metadata_names_the_converted_weights(builds):
    engine = builds.engine("line", "q4f16_0", "float16")
    _model_dir, weights, _lib, config = builds.get("line", "q4f16_0", "float16")
    meta = engine.metadata
    specs = param_specs(config, get_quantization("q4f16_0"), ffn_out_dtype="float16")
    assert [(p["name"], tuple(p["shape"]), p["dtype"]) for p in meta["params"]] == [(s.name, s.shape, s.dtype) for s in specs]
    cached = {r["name"] for shard in json.loads((weights / "tensor-cache.json").read_text())["records"] for r in shard["records"]}
    assert cached == {s.name for s in specs}
    assert meta["context_window_size"] == CONTEXT and meta["prefill_chunk_size"] == CHUNK
    assert meta["kv_cache"]["num_hidden_layers"] == 2 and meta["memory_usage"]["batch_verify"] > 0
    for name in ("embed", "prefill", "decode", "batch_prefill", "batch_decode", "batch_verify", "create_tir_paged_kv_cache", "softmax_with_temperature"):
        assert engine.vm.module.implements_function(name), name


def test_mismatched_weights_are_a_user_error(builds):
    _m, _w, lib_q0, _c = builds.get("line", "q0f16", "float16")
    _m, weights_q4, _l, _c = builds.get("line", "q4f16_0", "float16")
    with pytest.raises(UserError, match=r"has no tensor 'gpt_neox.embed_in.weight'.*quantization"):
        Engine(lib_q0, weights_q4)
    _m, weights_f32, _l, _c = builds.get("line", "q0f32")
    with pytest.raises(UserError, match=r"is float32\[128, 64\], but .* expects float16\[128, 64\]"):
        Engine(lib_q0, weights_f32)
    with pytest.raises(UserError, match="tensor-cache.json: not found"):
        Engine(lib_q0, lib_q0.parent)
    with pytest.raises(UserError, match="model library not found"):
        Engine(lib_q0.parent / "nope.so", weights_q4)
