"""The streaming reference against transformers' float32 GPT-NeoX (the independent reference)."""

from __future__ import annotations

import numpy as np
import pytest

from hf2mlc import reference
from tiny_models import VARIANTS, load_reference, make_tiny_model, reference_logits

#: The streaming forward must equal transformers' float32 logits to this relative error (max |Δ| / max |ref|).
MAX_REL_ERROR = 1e-5


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    return {variant: make_tiny_model(root / variant, variant, seed=3) for variant in VARIANTS}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_equal_transformers(models, variant):
    ids = np.random.default_rng(0).integers(0, 128, size=50)
    ours = reference.stream_forward(models[variant], ids)
    ref = reference_logits(load_reference(models[variant]), ids.tolist())
    assert ours.shape == ref.shape == (50, 128)
    assert ours.dtype == np.float32
    err = _rel(ours, ref)
    print(f"{variant}: max rel error vs transformers {err:.2e}")
    assert err <= MAX_REL_ERROR


def test_blocks_and_documents(models, monkeypatch):
    """Small attention and head blocks, and two documents in one pass, give each document's own logits."""
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 128, size=n) for n in (37, 1, 23)]
    model = load_reference(models["pythia"])
    expected = np.concatenate([reference_logits(model, d.tolist()) for d in docs])
    monkeypatch.setattr(reference, "ATTENTION_BLOCK_ELEMENTS", 4 * 5 * 37)  # 5 queries of the longest document per block
    blocks = list(reference.stream_logit_blocks(models["pythia"], docs, block_tokens=16))
    assert [start for start, _ in blocks] == [0, 16, 32, 48]
    ours = np.concatenate([b for _, b in blocks])
    assert _rel(ours, expected) <= MAX_REL_ERROR


def test_observe_sees_the_inputs_transformers_feeds_each_linear(models):
    import torch

    ids = np.random.default_rng(2).integers(0, 128, size=20)
    model = load_reference(models["line"])
    seen_hf: dict[tuple[int, str], np.ndarray] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            parts = name.split(".")
            key = (int(parts[2]), ".".join(parts[3:])) if parts[0] == "gpt_neox" else (-1, name)
            hooks.append(module.register_forward_hook(lambda m, a, o, key=key: seen_hf.__setitem__(key, a[0][0].detach().numpy().copy())))
    reference_logits(model, ids.tolist())
    for hook in hooks:
        hook.remove()
    seen: dict[tuple[int, str], np.ndarray] = {}
    reference.stream_forward(models["line"], ids, observe=lambda layer, name, x: seen.__setitem__((layer, name), x.copy()))
    expected_keys = {(layer, name) for layer in range(2) for name in reference.LINEARS} | {(-1, "embed_out")}
    assert set(seen) == expected_keys
    hf_names = {(k[0], "embed_out" if k[1] == "lm_head" else k[1]) for k in seen_hf}
    assert hf_names == expected_keys
    for (layer, name), x in seen.items():
        hf = seen_hf[(layer, "lm_head" if name == "embed_out" else name)]
        assert x.shape == hf.shape and x.dtype == np.float32
        assert _rel(x, hf) <= MAX_REL_ERROR, (layer, name)


def test_weight_source_replaces_the_checkpoint(models):
    """A weight source is what the forward pass computes with (the hook the dequantized check uses)."""
    from hf2mlc.model.gpt_neox.config import GPTNeoXConfig

    model_dir = models["gelu_tanh"]
    config = GPTNeoXConfig.from_file(model_dir)
    checkpoint = reference.CheckpointWeights(model_dir, config)
    name = "gpt_neox.layers.1.mlp.dense_4h_to_h.weight"
    source = lambda n: np.zeros_like(checkpoint(n)) if n == name else checkpoint(n)  # noqa: E731
    ids = np.arange(10)
    ours = reference.stream_forward(model_dir, ids, weights=source)
    checkpoint.close()
    model = load_reference(model_dir)
    import torch

    with torch.no_grad():
        model.gpt_neox.layers[1].mlp.dense_4h_to_h.weight.zero_()
    assert _rel(ours, reference_logits(model, ids.tolist())) <= MAX_REL_ERROR


def test_greedy_generate_matches_transformers(models):
    import torch

    model_dir = models["pythia"]
    model = load_reference(model_dir)
    prompts = [[5, 9, 11, 3], [7], [100, 1, 2, 3, 4, 5, 6]]
    expected = []
    for p in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
        expected.append(out[0, len(p):].tolist())
    ours = reference.greedy_generate(model_dir, prompts, max_new_tokens=6, stop_token_ids=[[], [], []])
    assert ours == expected
    # A stop token ends an answer (and is kept) without disturbing the others.
    stop = expected[0][2]
    cut = reference.greedy_generate(model_dir, prompts, max_new_tokens=6, stop_token_ids=[[stop], [], []])
    assert cut[0] == expected[0][: expected[0].index(stop) + 1] and cut[1:] == expected[1:]


@pytest.mark.parametrize("variant,quantization", [("pythia", "q4f16_0"), ("gelu_tanh", "q4f16_1"), ("line", "q0f16")])
def test_tensor_cache_source_is_the_dequantized_reference(models, tmp_path, variant, quantization):
    """Streaming from a converted cache equals transformers holding the cache's dequantized numbers."""
    from hf2mlc.convert import convert_weights
    from hf2mlc.check import dequantized_reference, transformers_logits
    from hf2mlc.model.gpt_neox.config import GPTNeoXConfig

    model_dir = models[variant]
    convert_weights(model_dir, tmp_path / "w", quantization, ffn_out_dtype="float32", progress=False)
    source = reference.TensorCacheWeights(tmp_path / "w", GPTNeoXConfig.from_file(model_dir), quantization)
    ids = np.random.default_rng(4).integers(0, 128, size=30)
    ours = reference.stream_forward(model_dir, ids, weights=source)
    ref = transformers_logits(dequantized_reference(model_dir, tmp_path / "w", quantization), ids.tolist())
    assert _rel(ours, ref) <= MAX_REL_ERROR
    if quantization != "q0f16":  # (the tiny models' bf16-exact weights survive float16 unchanged)
        assert _rel(ours, reference.stream_forward(model_dir, ids)) > 1e-4  # it is not the checkpoint
