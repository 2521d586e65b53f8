"""Weight conversion: byte-identical to tvmjs.dump_tensor_cache, both source formats, both code paths,
and bounded memory on a multi-shard checkpoint.

The reference output is built independently of hf2mlc's loader and converter: tensors are read with
``safe_open`` / ``torch.load``, reordered with MLC's own qkv formula, cast with numpy, quantized with
the packers that tests/test_quantization.py checks against TVM, and written by apache-tvm's
``tvm.contrib.tvmjs.dump_tensor_cache`` with the metadata MLC's convert_weight.py computes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hf2mlc.convert import convert_weights
from hf2mlc.errors import UserError
from hf2mlc.model.gpt_neox.config import GPTNeoXConfig
from hf2mlc.model.gpt_neox.params import param_specs
from hf2mlc.quantization import get_quantization
from hf2mlc.quantization.group import quantize_embedding, quantize_linear

SMALL = {"hidden_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 512, "vocab_size": 8192}
DROPPED = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")


def _config_dict(sizes: dict, tie: bool) -> dict:
    return {"model_type": "gpt_neox", **sizes, "rotary_pct": 1.0, "use_parallel_residual": False,
            "tie_word_embeddings": tie, "torch_dtype": "float16"}


def _hf_state(sizes: dict, tie: bool, seed: int, dtype=np.float16) -> dict[str, np.ndarray]:
    """Random GPT-NeoX weights under Hugging Face names, with a few awkward groups mixed in."""
    rng = np.random.default_rng(seed)
    h, i, v = sizes["hidden_size"], sizes["intermediate_size"], sizes["vocab_size"]
    shapes = {"gpt_neox.embed_in.weight": (v, h)}
    for n in range(sizes["num_hidden_layers"]):
        p = f"gpt_neox.layers.{n}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            shapes[f"{p}.{norm}.weight"] = shapes[f"{p}.{norm}.bias"] = (h,)
        for name, o, k in (("attention.query_key_value", 3 * h, h), ("attention.dense", h, h),
                           ("mlp.dense_h_to_4h", i, h), ("mlp.dense_4h_to_h", h, i)):
            shapes[f"{p}.{name}.weight"], shapes[f"{p}.{name}.bias"] = (o, k), (o,)
    shapes["gpt_neox.final_layer_norm.weight"] = shapes["gpt_neox.final_layer_norm.bias"] = (h,)
    if not tie:
        shapes["embed_out.weight"] = (v, h)
    state = {}
    for name, shape in shapes.items():
        w = (rng.standard_normal(shape, dtype=np.float32) * 0.05).astype(dtype)
        if len(shape) == 2:
            w[0, :] = 0  # all-zero groups
            w[1, :] = np.round(w[1, :] * 40) / 4  # quarter-step ties
        state[name] = w
    return state


def _write_safetensors(directory: Path, state: dict[str, np.ndarray], sizes: dict, tie: bool, shards: int = 1) -> None:
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(_config_dict(sizes, tie)))
    if shards == 1:
        save_file(state, str(directory / "model.safetensors"))
        return
    names, weight_map = list(state), {}
    per = math.ceil(len(names) / shards)
    for s in range(shards):
        part = names[s * per : (s + 1) * per]
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n] for n in part}, str(directory / file))
        weight_map.update(dict.fromkeys(part, file))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _read_reference_state(model_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint, read with the libraries' own readers."""
    out: dict[str, np.ndarray] = {}
    if (model_dir / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(model_dir / "model.safetensors", framework="np") as f:
            out = {k: f.get_tensor(k) for k in f.keys()}
    else:
        import torch

        for k, t in torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True).items():
            out[k] = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
    return out


def _reference_dump(model_dir: Path, out_dir: Path, quantization: str, ffn_out_dtype: str, shard_cap_mb: int) -> None:
    """MLC's conversion, step by step, written by tvmjs.dump_tensor_cache."""
    from tvm.contrib import tvmjs

    config = GPTNeoXConfig.from_file(model_dir)
    q = get_quantization(quantization)
    state = {}
    for k, v in _read_reference_state(model_dir).items():
        if k.endswith(DROPPED):
            continue
        k = "embed_out.weight" if k == "lm_head.weight" else k
        state[k if k.startswith(("gpt_neox.", "embed_out.")) else f"gpt_neox.{k}"] = v
    heads = config.num_attention_heads

    def mlc_qkv(w):  # python/mlc_llm/model/gpt_neox/gpt_neox_loader.py's transform, restated
        w2 = np.reshape(w, [heads, 3 * config.head_dim, -1])
        return np.reshape(np.concatenate(np.split(w2, 3, axis=1), axis=0), w.shape)

    params: dict[str, np.ndarray] = {}
    for spec in param_specs(config, q, ffn_out_dtype=ffn_out_dtype):
        if spec.name in params:
            continue
        src = state["gpt_neox.embed_in.weight" if spec.source == "embed_out.weight" and config.tie_word_embeddings
                    else spec.source]
        if spec.reorder_qkv:
            src = mlc_qkv(src)
        if spec.transform == "cast":
            params[spec.name] = src.astype(spec.dtype)
            continue
        base = spec.name.rsplit(".", 1)[0]
        quantizer = quantize_embedding if spec.kind == "embedding" else quantize_linear
        params[f"{base}.q_weight"], params[f"{base}.q_scale"] = quantizer(src.astype(q.model_dtype), q)
    total_bytes = 0.0
    for value in params.values():
        total_bytes += math.prod(value.shape) * value.dtype.itemsize
    total_params = sum(v.size for v in state.values())
    meta = {"ParamSize": len(params), "ParamBytes": total_bytes, "BitsPerParam": total_bytes * 8.0 / total_params}
    tvmjs.dump_tensor_cache(params, str(out_dir), encode_format="f32-to-bf16", meta_data=meta,
                            shard_cap_mb=shard_cap_mb, show_progress=False)


def _dir_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _assert_same_dirs(got: Path, expected: Path) -> None:
    a, b = _dir_bytes(got), _dir_bytes(expected)
    assert sorted(a) == sorted(b)
    for name in b:
        assert a[name] == b[name], f"{name} differs"


# ---------------------------------------------------------------- byte identity


@pytest.mark.parametrize(
    "quantization, tie, ffn_out_dtype, fast",
    [
        ("q0f16", False, "float32", True),
        ("q0f16", True, "float16", False),
        ("q0f32", False, "float32", True),
        ("q4f16_0", True, "float32", True),
        ("q4f16_0", False, "float16", False),
        ("q4f16_1", False, "float32", True),
        ("q4f32_1", True, "float32", True),
        ("q3f16_0", False, "float16", True),
    ],
)
def test_output_is_byte_identical_to_tvmjs(tmp_path, quantization, tie, ffn_out_dtype, fast):
    model = tmp_path / "model"
    _write_safetensors(model, _hf_state(SMALL, tie, seed=1), SMALL, tie)
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    stats = convert_weights(model, ours, quantization, ffn_out_dtype=ffn_out_dtype, shard_cap_mb=1,
                            progress=False, fast=fast)
    _reference_dump(model, ref, quantization, ffn_out_dtype, shard_cap_mb=1)
    _assert_same_dirs(ours, ref)
    index = json.loads((ours / "tensor-cache.json").read_text())
    assert stats["shards"] == len(index["records"]) >= 2
    assert stats["tensor_count"] == index["metadata"]["ParamSize"]
    assert stats["bits_per_param"] == index["metadata"]["BitsPerParam"]
    assert stats["bytes_written"] == sum(s["nbytes"] for s in index["records"])
    # Out-of-band shards (a tensor of at least half the cap) appear, and every record says f32-to-bf16.
    assert any(len(s["records"]) == 1 and s["nbytes"] * 2 >= 1 << 20 for s in index["records"])
    assert {r["format"] for s in index["records"] for r in s["records"]} == {"f32-to-bf16"}
    has_f32 = any(r["dtype"] == "float32" for s in index["records"] for r in s["records"])
    assert (ours / "tensor-cache-b16.json").is_file() == has_f32
    # Bits per *source* parameter: a tied embed_out is an extra tensor on disk but no extra source weight.
    bits = {"q0f16": 16, "q0f32": 32, "q4f16_0": 4.5, "q4f16_1": 4.5, "q4f32_1": 5, "q3f16_0": 3.2 * 160 / 128 + 0.4}
    n_src = stats["param_count"]
    tied_copy = SMALL["vocab_size"] * SMALL["hidden_size"] if tie else 0
    assert stats["bits_per_param"] == pytest.approx(bits[quantization] * (n_src + tied_copy) / n_src, rel=0.05)


def test_fast_and_plain_paths_agree_bit_for_bit(tmp_path):
    sizes = {**SMALL, "hidden_size": 96, "intermediate_size": 200, "vocab_size": 1000}  # ragged groups
    model = tmp_path / "model"
    _write_safetensors(model, _hf_state(sizes, False, seed=2), sizes, False)
    for quantization in ("q4f16_0", "q4f32_1", "q3f16_1"):
        fast, plain = tmp_path / f"fast-{quantization}", tmp_path / f"plain-{quantization}"
        convert_weights(model, fast, quantization, progress=False, fast=True, threads=2)
        convert_weights(model, plain, quantization, progress=False, fast=False)
        _assert_same_dirs(fast, plain)


def test_sharded_checkpoint_gives_the_same_bytes(tmp_path):
    state = _hf_state(SMALL, False, seed=3)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    _write_safetensors(single, state, SMALL, False)
    _write_safetensors(sharded, state, SMALL, False, shards=3)
    convert_weights(single, tmp_path / "a", "q4f16_1", progress=False)
    convert_weights(sharded, tmp_path / "b", "q4f16_1", progress=False)
    _assert_same_dirs(tmp_path / "a", tmp_path / "b")


def test_torch_bin_with_bool_buffers_and_lm_head(tmp_path):
    import torch

    sizes = {**SMALL, "vocab_size": 2048}
    state = _hf_state(sizes, False, seed=4)
    pickled: dict = {k.removeprefix("gpt_neox."): torch.from_numpy(v) for k, v in state.items()}
    pickled["lm_head.weight"] = pickled.pop("embed_out.weight")  # transformers 5 spelling
    for n in range(sizes["num_hidden_layers"]):  # LINE's pickles carry torch.BoolStorage mask buffers
        pickled[f"layers.{n}.attention.bias"] = torch.tril(torch.ones(16, 16, dtype=torch.bool))[None, None]
        pickled[f"layers.{n}.attention.masked_bias"] = torch.tensor(-1e9)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(_config_dict(sizes, False)))
    torch.save(pickled, model / "pytorch_model.bin")
    stats = convert_weights(model, tmp_path / "ours", "q4f16_0", shard_cap_mb=1, progress=False)
    assert stats["source_format"] == "pytorch"
    assert stats["param_count"] == sum(v.size for v in state.values())
    _reference_dump(model, tmp_path / "ref", "q4f16_0", "float32", shard_cap_mb=1)
    _assert_same_dirs(tmp_path / "ours", tmp_path / "ref")
    # and the same bytes as from safetensors holding the same weights
    _write_safetensors(tmp_path / "st", state, sizes, False)
    convert_weights(tmp_path / "st", tmp_path / "from-st", "q4f16_0", shard_cap_mb=1, progress=False)
    _assert_same_dirs(tmp_path / "ours", tmp_path / "from-st")


def test_transformers_checkpoint_round_trips_through_the_cache(tmp_path):
    """A real save_pretrained (tied, like LINE) read back from the cache equals the HF weights."""
    import torch
    import transformers

    from hf2mlc.tensor_cache import read_tensor_cache

    cfg = transformers.GPTNeoXConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                                     intermediate_size=128, vocab_size=300, tie_word_embeddings=True,
                                     use_parallel_residual=False)
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(cfg).to(torch.float16)
    model.save_pretrained(tmp_path / "hf")
    convert_weights(tmp_path / "hf", tmp_path / "out", "q0f16", progress=False)
    cache = read_tensor_cache(tmp_path / "out")
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    np.testing.assert_array_equal(cache["embed_out.weight"], sd["gpt_neox.embed_in.weight"].astype(np.float16))
    qkv = cache["gpt_neox.layers.1.attention.query_key_value.weight"].astype(np.float32)
    hf_qkv = sd["gpt_neox.layers.1.attention.query_key_value.weight"].reshape(4, 3, 16, 64)
    np.testing.assert_array_equal(qkv.reshape(3, 4, 16, 64), hf_qkv.transpose(1, 0, 2, 3))
    # MLP biases are float32 (ffn_out_dtype default), stored as bf16 on disk and decoded on load.
    bias = cache["gpt_neox.layers.0.mlp.dense_h_to_4h.bias"]
    assert bias.dtype == np.float32
    np.testing.assert_allclose(bias, sd["gpt_neox.layers.0.mlp.dense_h_to_4h.bias"], rtol=2**-8)


# ---------------------------------------------------------------- user errors and atomicity


def test_bad_settings_are_user_errors(tmp_path):
    model = tmp_path / "model"
    _write_safetensors(model, _hf_state(SMALL, False, seed=5), SMALL, False)
    with pytest.raises(UserError, match=r"quantization 'q4f16'"):
        convert_weights(model, tmp_path / "o", "q4f16", progress=False)
    with pytest.raises(UserError, match=r"ffn_out_dtype 'bfloat16'"):
        convert_weights(model, tmp_path / "o", "q4f16_1", ffn_out_dtype="bfloat16", progress=False)
    with pytest.raises(UserError, match=r"no weights found"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text(json.dumps(_config_dict(SMALL, False)))
        convert_weights(tmp_path / "empty", tmp_path / "o", "q4f16_1", progress=False)
    assert not (tmp_path / "o").exists()


def test_failed_conversion_leaves_previous_output_untouched(tmp_path):
    state = _hf_state(SMALL, False, seed=6)
    state["gpt_neox.layers.1.mlp.dense_4h_to_h.weight"] = state["gpt_neox.layers.1.mlp.dense_4h_to_h.weight"][:, :-3]
    model = tmp_path / "model"
    _write_safetensors(model, state, SMALL, False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "tensor-cache.json").write_text("previous")
    with pytest.raises(UserError, match=r"dense_4h_to_h\.weight' has shape \[128, 509\]"):
        convert_weights(model, out, "q4f16_1", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]
    assert (out / "tensor-cache.json").read_text() == "previous"


# ---------------------------------------------------------------- memory


_CONVERT_AND_REPORT = textwrap.dedent(
    """
    import json, resource, sys
    from hf2mlc.convert import convert_weights
    stats = convert_weights(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)
    stats["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # includes the parent's
    print(json.dumps(stats))
    """
)


def _convert_in_subprocess(model: Path, out: Path, quantization: str) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-c", _CONVERT_AND_REPORT, str(model), str(out), quantization],
                            capture_output=True, text=True, env=env, check=True, timeout=600)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss units and page-cache behaviour")
def test_peak_memory_is_a_fraction_of_the_model(tmp_path):
    sizes = {"hidden_size": 1024, "num_attention_heads": 8, "num_hidden_layers": 12,
             "intermediate_size": 4096, "vocab_size": 16384}
    model = tmp_path / "big"
    big_state_bytes = 0
    from safetensors.numpy import save_file

    # Written shard by shard so that the test itself never holds the model either.
    model.mkdir()
    (model / "config.json").write_text(json.dumps(_config_dict(sizes, False)))
    rng = np.random.default_rng(7)
    h, i, v = sizes["hidden_size"], sizes["intermediate_size"], sizes["vocab_size"]
    weight_map: dict[str, str] = {}
    groups: list[dict[str, tuple[int, ...]]] = [{"gpt_neox.embed_in.weight": (v, h)}]
    for n in range(sizes["num_hidden_layers"]):
        p = f"gpt_neox.layers.{n}"
        layer = {f"{p}.{norm}.{x}": (h,) for norm in ("input_layernorm", "post_attention_layernorm") for x in ("weight", "bias")}
        for name, o, k in (("attention.query_key_value", 3 * h, h), ("attention.dense", h, h),
                           ("mlp.dense_h_to_4h", i, h), ("mlp.dense_4h_to_h", h, i)):
            layer[f"{p}.{name}.weight"], layer[f"{p}.{name}.bias"] = (o, k), (o,)
        groups.append(layer)
    groups.append({"gpt_neox.final_layer_norm.weight": (h,), "gpt_neox.final_layer_norm.bias": (h,),
                   "embed_out.weight": (v, h)})
    for s, group in enumerate(groups):
        file = f"model-{s:05d}.safetensors"
        tensors = {n: (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16) for n, shape in group.items()}
        big_state_bytes += sum(t.nbytes for t in tensors.values())
        save_file(tensors, str(model / file))
        weight_map.update(dict.fromkeys(group, file))
        del tensors
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    tiny = tmp_path / "tiny"
    _write_safetensors(tiny, _hf_state(SMALL, False, seed=8), SMALL, False)
    # peak_rss_mb is VmHWM: ru_maxrss of a forked child starts at the parent's (pytest's) resident set.
    baseline = _convert_in_subprocess(tiny, tmp_path / "tiny-out", "q4f16_0")["peak_rss_mb"]
    for quantization in ("q4f16_0", "q0f16"):
        stats = _convert_in_subprocess(model, tmp_path / f"out-{quantization}", quantization)
        model_mb = big_state_bytes / 2**20
        print(f"\n{quantization}: model {model_mb:.0f} MiB, baseline {baseline:.0f} MiB, peak {stats['peak_rss_mb']:.0f} MiB, "
              f"{stats['seconds']:.2f} s, {model_mb / stats['seconds']:.0f} MiB/s")
        assert baseline < 120
        assert stats["peak_rss_mb"] < baseline + model_mb / 2
        assert stats["shards"] >= (4 if quantization == "q4f16_0" else 14)


def test_library_params_are_checked_against_the_cache(tmp_path):
    """The check the engine and the package stage share: a tensor a library needs must be in the cache
    with its shape and dtype, else one error naming it."""
    from hf2mlc.tensor_cache import TensorCacheWriter, check_library_params

    writer = TensorCacheWriter(tmp_path)
    writer.add("a.weight", np.zeros((4, 8), dtype=np.float16))
    writer.add("a.q_weight", np.zeros((2, 3), dtype=np.uint32))
    writer.finish({})
    good = [{"name": "a.weight", "shape": [4, 8], "dtype": "float16"}, {"name": "a.q_weight", "shape": [2, 3], "dtype": "uint32"}]
    check_library_params(tmp_path, good, "lib.so")
    with pytest.raises(UserError, match=r"has no tensor 'b.weight', which lib.so needs"):
        check_library_params(tmp_path, [*good, {"name": "b.weight", "shape": [4], "dtype": "float16"}], "lib.so")
    with pytest.raises(UserError, match=r"tensor 'a.weight' is float16\[4, 8\], but lib.so expects float32"):
        check_library_params(tmp_path, [{"name": "a.weight", "shape": [4, 8], "dtype": "float32"}], "lib.so")
    with pytest.raises(UserError, match=r"expects uint32\[3, 2\]"):
        check_library_params(tmp_path, [{"name": "a.q_weight", "shape": [3, 2], "dtype": "uint32"}], "lib.so")
    with pytest.raises(UserError, match="not found"):
        check_library_params(tmp_path / "nowhere", good, "lib.so")
