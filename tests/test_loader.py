"""Hugging Face checkpoint reading (hf2mlc.loader) and GPT-NeoX's name mapping (hf2mlc.model.gpt_neox.loader):
formats, sharding, name mapping, qkv reorder and user errors.

References: ``safetensors.safe_open`` and ``torch.load`` for the tensor values, and the qkv layouts
as Hugging Face's attention and MLC's fused attention read them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hf2mlc.errors import UserError
from hf2mlc.loader.huggingface import HuggingFaceWeights, find_weight_files
from hf2mlc.model.gpt_neox.config import GPTNeoXConfig
from hf2mlc.model.gpt_neox.loader import (
    GPTNeoXCheckpoint,
    SourceReader,
    canonical_name,
    expected_source_shapes,
    reorder_qkv,
)

HIDDEN, HEADS, LAYERS, INTER, VOCAB = 32, 4, 2, 64, 50


def _config_dict(tie: bool = False) -> dict:
    return {
        "model_type": "gpt_neox", "hidden_size": HIDDEN, "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS, "intermediate_size": INTER, "vocab_size": VOCAB,
        "rotary_pct": 1.0, "use_parallel_residual": False, "tie_word_embeddings": tie,
    }


def _state(rng: np.random.Generator, *, tie: bool, prefix: bool = True, dtype="float16") -> dict[str, np.ndarray]:
    config = GPTNeoXConfig.from_dict(_config_dict(tie))
    state = {}
    for name, shape in expected_source_shapes(config).items():
        if name == "embed_out.weight" and tie:
            continue
        stored = name if prefix or not name.startswith("gpt_neox.") else name.removeprefix("gpt_neox.")
        state[stored] = rng.standard_normal(shape).astype(np.float32).astype(dtype)
    return state


def _write_config(directory: Path, tie: bool = False) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(_config_dict(tie)))


def _save_safetensors(directory: Path, state: dict[str, np.ndarray], shards: int = 1) -> None:
    from safetensors.numpy import save_file

    names = list(state)
    if shards == 1:
        save_file(state, str(directory / "model.safetensors"))
        return
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n] for n in part}, str(directory / file))
        weight_map.update({n: file for n in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _save_torch(directory: Path, state: dict, name: str = "pytorch_model.bin") -> None:
    import torch

    torch.save({k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in state.items()}, directory / name)


# ---------------------------------------------------------------- formats


def test_safetensors_reader_matches_safe_open(tmp_path):
    import ml_dtypes
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    tensors = {
        "a_f16": torch.from_numpy(rng.standard_normal((3, 5)).astype(np.float16)),
        "b_f32": torch.from_numpy(rng.standard_normal((7,)).astype(np.float32)),
        "c_bf16": torch.from_numpy(rng.standard_normal((4, 4)).astype(np.float32)).to(torch.bfloat16),
        "d_i64": torch.arange(6).reshape(2, 3),
        "e_bool": torch.tensor([True, False, True]),
        "f_empty": torch.zeros((0, 4), dtype=torch.float16),
    }
    _write_config(tmp_path)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with HuggingFaceWeights(tmp_path) as weights, safe_open(tmp_path / "model.safetensors", framework="pt") as ref:
        assert weights.format == "safetensors"
        for stored in ref.keys():
            got = weights.read(stored)  # the generic reader: names as stored
            expected = ref.get_tensor(stored)
            assert got.shape == tuple(expected.shape)
            if expected.dtype == torch.bfloat16:
                assert got.dtype == np.dtype(ml_dtypes.bfloat16)
                np.testing.assert_array_equal(got.astype(np.float32), expected.float().numpy())
            else:
                assert got.dtype == expected.numpy().dtype
                np.testing.assert_array_equal(got, expected.numpy())
        assert weights.total_elements() == sum(t.numel() for t in tensors.values())


def test_sharded_safetensors_and_prefixless_names(tmp_path):
    rng = np.random.default_rng(1)
    state = _state(rng, tie=False, prefix=False)
    _write_config(tmp_path)
    _save_safetensors(tmp_path, state, shards=3)
    fmt, files = find_weight_files(tmp_path)
    assert fmt == "safetensors" and len(files) == 3
    with GPTNeoXCheckpoint(tmp_path) as weights:
        assert "gpt_neox.layers.1.mlp.dense_4h_to_h.weight" in weights
        assert weights.info("gpt_neox.layers.1.mlp.dense_4h_to_h.weight").stored_name == "layers.1.mlp.dense_4h_to_h.weight"
        for stored, value in state.items():
            np.testing.assert_array_equal(weights.read(canonical_name(stored)), value)


def test_torch_bin_drops_buffers_and_reads_bfloat16(tmp_path):
    import torch

    rng = np.random.default_rng(2)
    state: dict = _state(rng, tie=False)
    state["gpt_neox.layers.0.attention.query_key_value.weight"] = torch.from_numpy(
        state["gpt_neox.layers.0.attention.query_key_value.weight"].astype(np.float32)
    ).to(torch.bfloat16)
    for i in range(LAYERS):  # what LINE's / old transformers' pickles carry besides the weights
        state[f"gpt_neox.layers.{i}.attention.bias"] = torch.tril(torch.ones(8, 8, dtype=torch.bool))[None, None]
        state[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
        state[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.ones(HIDDEN // HEADS // 2)
    _write_config(tmp_path)
    _save_torch(tmp_path, state)
    with GPTNeoXCheckpoint(tmp_path) as weights:
        assert weights.format == "pytorch"
        assert not [n for n in weights.tensors if "masked_bias" in n or "inv_freq" in n or n.endswith("attention.bias")]
        bf = weights.read("gpt_neox.layers.0.attention.query_key_value.weight")
        np.testing.assert_array_equal(
            bf.astype(np.float32), state["gpt_neox.layers.0.attention.query_key_value.weight"].float().numpy()
        )
        np.testing.assert_array_equal(weights.read("embed_out.weight"), state["embed_out.weight"])
        expected_count = sum(v.size for k, v in state.items() if isinstance(v, np.ndarray)) + 3 * HIDDEN * HIDDEN
        assert weights.total_elements() == expected_count


def test_safetensors_preferred_over_bin(tmp_path):
    rng = np.random.default_rng(3)
    st = _state(rng, tie=False)
    _write_config(tmp_path)
    _save_safetensors(tmp_path, st)
    _save_torch(tmp_path, {k: v + np.float16(1) for k, v in st.items()})
    with GPTNeoXCheckpoint(tmp_path) as weights:
        assert weights.format == "safetensors"
        np.testing.assert_array_equal(weights.read("gpt_neox.embed_in.weight"), st["gpt_neox.embed_in.weight"])


def test_lm_head_is_embed_out(tmp_path):
    rng = np.random.default_rng(4)
    state = _state(rng, tie=False)
    state["lm_head.weight"] = state.pop("embed_out.weight")
    _write_config(tmp_path)
    _save_safetensors(tmp_path, state)
    with GPTNeoXCheckpoint(tmp_path) as weights:
        np.testing.assert_array_equal(weights.read("embed_out.weight"), state["lm_head.weight"])


def test_tied_embedding_reads_embed_in(tmp_path):
    rng = np.random.default_rng(5)
    state = _state(rng, tie=True)
    _write_config(tmp_path, tie=True)
    _save_safetensors(tmp_path, state)
    config = GPTNeoXConfig.from_file(tmp_path)
    with GPTNeoXCheckpoint(tmp_path) as weights:
        reader = SourceReader(weights, config)
        assert reader.resolve("embed_out.weight") == "gpt_neox.embed_in.weight"
        np.testing.assert_array_equal(reader.read("embed_out.weight"), state["gpt_neox.embed_in.weight"])


# ---------------------------------------------------------------- qkv reorder


def test_reorder_qkv_matches_hugging_face_and_mlc_semantics():
    rng = np.random.default_rng(6)
    heads, head_dim, hidden = 4, 3, 5
    w = rng.standard_normal((3 * heads * head_dim, hidden)).astype(np.float32)
    b = rng.standard_normal(3 * heads * head_dim).astype(np.float32)
    x = rng.standard_normal((2, hidden)).astype(np.float32)
    # Hugging Face: qkv.view(..., heads, 3 * head_dim), then q, k, v are the three thirds per head.
    hf = (x @ w.T + b).reshape(2, heads, 3, head_dim)
    # MLC: the fused projection splits as (3, heads, head_dim): all q heads, then k, then v.
    mlc = (x @ reorder_qkv(w, heads).T + reorder_qkv(b, heads)).reshape(2, 3, heads, head_dim)
    for part in range(3):
        np.testing.assert_array_equal(mlc[:, part], hf[:, :, part])
    # The same as MLC's own formulation: reshape [heads, 3*head_dim, -1], split 3 on axis 1, concat on 0.
    split = np.split(w.reshape(heads, 3 * head_dim, -1), 3, axis=1)
    np.testing.assert_array_equal(reorder_qkv(w, heads), np.concatenate(split, axis=0).reshape(w.shape))


def test_reader_reorders_qkv_on_request(tmp_path):
    rng = np.random.default_rng(7)
    state = _state(rng, tie=False)
    _write_config(tmp_path)
    _save_safetensors(tmp_path, state)
    with GPTNeoXCheckpoint(tmp_path) as weights:
        reader = SourceReader(weights, GPTNeoXConfig.from_file(tmp_path))
        name = "gpt_neox.layers.1.attention.query_key_value.bias"
        np.testing.assert_array_equal(reader.read(name, reorder=True), reorder_qkv(state[name], HEADS))
        assert not np.array_equal(reader.read(name, reorder=True), state[name])


# ---------------------------------------------------------------- user errors


def test_no_weights_is_a_user_error(tmp_path):
    _write_config(tmp_path)
    with pytest.raises(UserError, match=r"no weights found.*model\.safetensors"):
        GPTNeoXCheckpoint(tmp_path)


def test_index_naming_a_missing_file(tmp_path):
    rng = np.random.default_rng(8)
    _write_config(tmp_path)
    _save_safetensors(tmp_path, _state(rng, tie=False), shards=2)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UserError, match=r"model\.safetensors\.index\.json.*model-00002-of-00002"):
        GPTNeoXCheckpoint(tmp_path)


def test_missing_tensor_names_tensor_and_file(tmp_path):
    rng = np.random.default_rng(9)
    state = _state(rng, tie=False)
    del state["gpt_neox.layers.1.attention.dense.weight"]
    _write_config(tmp_path)
    _save_safetensors(tmp_path, state)
    with GPTNeoXCheckpoint(tmp_path) as weights:
        reader = SourceReader(weights, GPTNeoXConfig.from_file(tmp_path))
        with pytest.raises(UserError, match=r"model\.safetensors: no tensor 'gpt_neox\.layers\.1\.attention\.dense\.weight'"):
            reader.info("gpt_neox.layers.1.attention.dense.weight")


def test_shape_mismatch_names_tensor_and_config(tmp_path):
    rng = np.random.default_rng(10)
    state = _state(rng, tie=False)
    state["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"] = state["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"][:-1]
    _write_config(tmp_path)
    _save_safetensors(tmp_path, state)
    with GPTNeoXCheckpoint(tmp_path) as weights:
        reader = SourceReader(weights, GPTNeoXConfig.from_file(tmp_path))
        with pytest.raises(UserError, match=r"dense_h_to_4h\.weight' has shape \[63, 32\].*implies \[64, 32\]"):
            reader.info("gpt_neox.layers.0.mlp.dense_h_to_4h.weight")


def test_truncated_safetensors_is_a_user_error(tmp_path):
    rng = np.random.default_rng(11)
    _write_config(tmp_path)
    _save_safetensors(tmp_path, _state(rng, tie=False))
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"model\.safetensors.*damaged"):
        GPTNeoXCheckpoint(tmp_path)


def test_duplicate_names_after_mapping_are_rejected(tmp_path):
    rng = np.random.default_rng(12)
    state = _state(rng, tie=False)
    state["lm_head.weight"] = state["embed_out.weight"]
    _write_config(tmp_path)
    _save_safetensors(tmp_path, state)
    with pytest.raises(UserError, match=r"duplicates"):
        GPTNeoXCheckpoint(tmp_path)
