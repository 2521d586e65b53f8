"""Calibrated quantization against independent numpy references, on small sizes.

* every output decodes, through a dequantizer written here from MLC's format (shared/reference/
  mlc-format.md), to exactly what the calibrated code says it encoded — and to what the project's
  own :func:`hf2mlc.quantization.group.dequantize` (the host engine's arithmetic) gives;
* the scale search equals a per-group brute force written as plain loops;
* GPTQ equals an unblocked, float64 reference that updates the inverse Hessian column by column
  (Optimal Brain Surgeon's formula) instead of using a Cholesky factor and lazy batches;
* each method's error is below round-to-nearest's on heavy-tailed weights and inputs with outlier
  channels (the numbers are printed);
* AWQ's folding leaves a transformers model's float32 logits unchanged (sequential and parallel
  residual), with activations captured by forward hooks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import hf2mlc
from hf2mlc.convert import convert_weights
from hf2mlc.errors import UserError
from hf2mlc.evaluation_text import load_tokenizer
from hf2mlc.model.gpt_neox.config import GPTNeoXConfig
from hf2mlc.quantization import METHODS, get_method, get_quantization
from hf2mlc.quantization.calibrated import (
    awq_scales,
    decode,
    encode_embedding,
    encode_linear,
    gptq,
    search_scales,
    top_code,
)
from hf2mlc.quantization.calibration import HEAD, LAYER_LINEARS, CalibrationStats, plan_layer
from hf2mlc.quantization.group import dequantize, quantize
from hf2mlc.tensor_cache import read_tensor_cache
from tiny_models import add_char_tokenizer, load_reference, make_tiny_model

FORMATS = ["q4f16_0", "q4f16_1", "q3f16_0", "q3f16_1"]


# ---------------------------------------------------------------- independent references


def mlc_dequantize(q_weight: np.ndarray, q_scale: np.ndarray, name: str, k: int) -> np.ndarray:
    """MLC's decoder from the format description, one element at a time: float32 [N, K]."""
    q = get_quantization(name)
    if q.linear_weight_layout == "KN":
        q_weight, q_scale = q_weight.T, q_scale.T
    bits = int(q.quantize_dtype[3:])
    per_word = 32 // bits
    offset = 2 ** (bits - 1) - 1
    out = np.empty((q_weight.shape[0], k), np.float32)
    for j in range(k):  # one input position at a time, all rows together
        words = q_weight[:, j // per_word].astype(np.uint64)
        values = (words >> np.uint64(bits * (j % per_word))) & np.uint64((1 << bits) - 1)
        scale = q_scale[:, j // q.group_size].astype(np.float16)
        out[:, j] = (values.astype(np.float16) - np.float16(offset)) * scale  # float16 arithmetic
    return out


def brute_force_search(weight, importance, name):
    """Per group, every candidate scale of the search tried with explicit loops: the scale of least error."""
    q = get_quantization(name)
    mi, top, gs = q.max_int_value, 2**q.bits - 1, q.group_size
    n, k = weight.shape
    scales = np.zeros((n, -(-k // gs)), np.float32)
    for r in range(n):
        for g in range(scales.shape[1]):
            w = weight[r, g * gs:(g + 1) * gs].astype(np.float64)
            d = importance[g * gs:(g + 1) * gs]
            high, low = max(w.max(), 0), max(-w.min(), 0)
            cands = [float(np.float16(np.float16(max(high, low)) / np.float16(mi)))]
            for ratio in (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7):
                cands.append(float(np.float16(max(high / (mi + 1), low / mi) * ratio)))
                cands.append(-float(np.float16(max(high / mi, low / (mi + 1)) * ratio)))
            best, chosen = np.inf, None
            for s in cands:
                codes = np.zeros_like(w) + mi if s == 0 else np.clip(np.rint(w / s) + mi, 0, top)
                err = float((d * (w - (codes - mi) * s) ** 2).sum())  # the search's objective: exact product
                if err < best:
                    best, chosen = err, s
            scales[r, g] = chosen
    return scales


def reference_gptq(weight, hessian, name, damp=0.01):
    """GPTQ without Cholesky or blocks: inverse Hessian updated by the OBS formula after each column."""
    q = get_quantization(name)
    n, k = weight.shape
    gs = q.group_size
    h = hessian.astype(np.float64).copy()
    diag = np.diag(h).copy()
    h[np.diag_indices(k)] += damp * diag.mean()
    hinv = np.linalg.inv(h)
    w = weight.astype(np.float64).copy()
    codes = np.zeros((n, k), np.uint8)
    scales = np.zeros((n, -(-k // gs)), np.float32)
    for j in range(k):
        g = j // gs
        if j % gs == 0:
            c, s = search_scales(w[:, j:j + gs].astype(np.float32), q, diag[j:j + gs])
            scales[:, g] = s[:, 0]
        s = scales[:, g]
        c = np.clip(np.rint(w[:, j] / s) + q.max_int_value, 0, top_code(q))
        codes[:, j] = c
        deq = decode(c[:, None].astype(np.uint8), s[:, None], q)[:, 0]
        e = (w[:, j] - deq) / hinv[j, j]
        w[:, j + 1:] -= np.outer(e, hinv[j, j + 1:])
        hinv = hinv - np.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return codes, scales


# ---------------------------------------------------------------- data


def realish(seed=0, n=48, k=200, tokens=512):
    """Heavy-tailed weights; inputs with correlated channels and a few 10x outlier channels (as LLMs have)."""
    rng = np.random.default_rng(seed)
    weight = (0.02 * rng.standard_t(4, size=(n, k))).astype(np.float32)
    mix = np.eye(k) + 0.3 * rng.standard_normal((k, k)) / np.sqrt(k)
    x = rng.standard_normal((tokens, k)) @ mix
    scale = np.exp(0.5 * rng.standard_normal(k))
    scale[rng.choice(k, 6, replace=False)] *= 10
    x = (x * scale).astype(np.float32)
    return weight, x


def output_error(x, weight, decoded):
    return float(np.sum((x.astype(np.float64) @ (weight.astype(np.float64) - decoded).T) ** 2))


def rtn_decoded(weight, name):
    q = get_quantization(name)
    q_weight, q_scale = quantize(weight, q)
    return dequantize(q_weight, q_scale, q, size=weight.shape[1])


# ---------------------------------------------------------------- tests


def test_method_registry_names():
    assert list(METHODS) == ["rtn", "scale_search", "awq", "gptq", "awq_gptq"]
    assert not METHODS["rtn"].calibrated and all(m.calibrated for n, m in METHODS.items() if n != "rtn")
    assert get_method("awq_gptq").gptq and get_method("awq_gptq").awq
    with pytest.raises(Exception, match="quantization method 'best'.*rtn"):
        get_method("best")


@pytest.mark.parametrize("name", FORMATS)
def test_every_calibrated_output_decodes_with_an_independent_dequantizer(name):
    q = get_quantization(name)
    weight, x = realish(1, n=12, k=88)  # ragged: 88 = 2.75 groups of 32, 2.2 of 40
    importance = (x.astype(np.float64) ** 2).mean(0)
    hessian = x.T.astype(np.float64) @ x / len(x)
    for label, (codes, scale) in {
        "search": search_scales(weight, q, importance),
        "gptq": gptq(weight, hessian, q),
    }.items():
        assert codes.dtype == np.uint8 and codes.max() <= top_code(q) and scale.dtype == np.float16
        q_weight, q_scale = encode_linear(codes, scale, q)
        want = decode(codes, scale, q)
        np.testing.assert_array_equal(mlc_dequantize(q_weight, q_scale, name, 88), want, err_msg=label)
        axis = 0 if q.linear_weight_layout == "KN" else 1
        ours = dequantize(q_weight, q_scale, q, axis=axis, size=88)
        np.testing.assert_array_equal(ours.T if axis == 0 else ours, want, err_msg=label)
    codes, scale = search_scales(weight, q)
    e_weight, e_scale = encode_embedding(codes, scale, q)
    assert e_weight.shape == (12, q.num_storage(88))  # embeddings are never transposed
    np.testing.assert_array_equal(dequantize(e_weight, e_scale, q, size=88), decode(codes, scale, q))


@pytest.mark.parametrize("name", ["q4f16_1", "q3f16_1"])
def test_scale_search_equals_brute_force_and_beats_rtn(name):
    q = get_quantization(name)
    weight, x = realish(2, n=16, k=120)
    importance = (x.astype(np.float64) ** 2).mean(0)
    codes, scale = search_scales(weight, q, importance)
    decoded = decode(codes, scale, q)
    diff = (weight.astype(np.float64) - decoded) ** 2 * importance
    reference = brute_force_search(weight, importance, name)
    assert (scale.astype(np.float32) == reference).mean() > 0.98  # float32 vs float64 ties may differ
    per_elem = np.repeat(reference, q.group_size, axis=1)[:, :120]
    ref_codes = np.clip(np.rint(weight / np.where(per_elem == 0, 1, per_elem)) + q.max_int_value, 0, top_code(q))
    searched = (diff.sum(), ((weight.astype(np.float64) - decode(ref_codes, reference, q)) ** 2 * importance).sum())
    assert abs(searched[0] / searched[1] - 1) < 1e-3
    rtn = ((weight.astype(np.float64) - rtn_decoded(weight, name)) ** 2 * importance).sum()
    ratio = diff.sum() / rtn
    print(f"{name}: scale search weighted error / RTN = {ratio:.3f}")
    assert ratio < 0.85
    assert (codes == top_code(q)).any() and (scale.astype(np.float32) < 0).any()  # the full range is used


@pytest.mark.parametrize("name", ["q4f16_0", "q3f16_1"])
def test_gptq_equals_unblocked_reference_and_beats_the_others(name):
    q = get_quantization(name)
    weight, x = realish(3, n=32, k=160)
    hessian = x.T.astype(np.float64) @ x / len(x)
    importance = np.diag(hessian)
    codes, scale = gptq(weight, hessian, q, block_groups=2)
    ref_codes, ref_scale = reference_gptq(weight, hessian, name)
    assert (codes == ref_codes).mean() > 0.99
    got, ref = output_error(x, weight, decode(codes, scale, q)), output_error(x, weight, decode(ref_codes, ref_scale, q))
    assert abs(got / ref - 1) < 0.02
    rtn = output_error(x, weight, rtn_decoded(weight, name))
    search = output_error(x, weight, decode(*search_scales(weight, q, importance), q))
    print(f"{name}: output error / RTN: scale search {search / rtn:.3f}, GPTQ {got / rtn:.3f}")
    assert got < 0.7 * rtn and got < search


@pytest.mark.parametrize("name", ["q4f16_1", "q3f16_1"])
def test_awq_scaling_lowers_the_output_error(name):
    q = get_quantization(name)
    weight, x = realish(4, n=64, k=160)
    importance = (x.astype(np.float64) ** 2).mean(0)
    s = awq_scales([weight], importance, q)
    assert not np.allclose(s, 1)  # outlier channels get scaled
    scaled_importance = importance / s.astype(np.float64) ** 2
    awq = decode(*search_scales(weight * s, q, scaled_importance), q) / s  # Q(W s) applied to x / s
    search = decode(*search_scales(weight, q, importance), q)
    rtn = output_error(x, weight, rtn_decoded(weight, name))
    e_awq, e_search = output_error(x, weight, awq), output_error(x, weight, search)
    print(f"{name}: output error / RTN: scale search {e_search / rtn:.3f}, AWQ + search {e_awq / rtn:.3f}")
    assert e_awq < e_search < rtn


def _hooked_stats(model, token_rows, *, hessians: bool) -> CalibrationStats:
    """The observe() interface, fed from transformers forward hooks on every linear."""
    stats = CalibrationStats(hessians=hessians)
    handles = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if name in ("embed_out", "lm_head"):
            layer, short = -1, HEAD
        else:
            parts = name.split(".")
            layer, short = int(parts[2]), ".".join(parts[3:])
            assert short in LAYER_LINEARS

        def hook(_module, args, layer=layer, short=short):
            stats.observe(layer, short, args[0].detach().numpy().reshape(-1, args[0].shape[-1]))

        handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for row in token_rows:
            model(torch.tensor([row]))
    for h in handles:
        h.remove()
    return stats


def _hf_state(model) -> dict[str, np.ndarray]:
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    if "lm_head.weight" in state:
        state["embed_out.weight"] = state.pop("lm_head.weight")
    return state


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrated")
    return {v: make_tiny_model(root / v, v, seed=3) for v in ("line", "pythia")}


@pytest.mark.parametrize("variant", ["line", "pythia"])
def test_awq_folding_leaves_the_float_model_unchanged(tiny, variant):
    model_dir = tiny[variant]
    config = GPTNeoXConfig.from_file(model_dir)
    model = load_reference(model_dir)
    rng = np.random.default_rng(0)
    rows = [list(rng.integers(0, 128, 24)) for _ in range(3)]
    stats = _hooked_stats(model, rows, hessians=False)
    state = _hf_state(model)
    folded = dict(state)
    q = get_quantization("q3f16_1")
    changed = 0
    for layer in [*range(config.num_hidden_layers), -1]:
        names = [n for n in state if n.startswith(f"gpt_neox.layers.{layer}.")] if layer >= 0 else \
            ["gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias", "embed_out.weight"]
        tensors, _ = plan_layer({n: folded[n] for n in names}, layer, stats, config, get_method("awq"), q)
        changed += sum(not np.array_equal(tensors[n], state[n]) for n in tensors)
        folded.update(tensors)
    assert changed >= 8 * config.num_hidden_layers  # norms, qkv, dense and h_to_4h are rescaled
    probe = [int(t) for t in rng.integers(0, 128, 20)]
    with torch.no_grad():
        want = model(torch.tensor([probe])).logits[0].numpy()
        if config.tie_word_embeddings:  # the folded head is a separate tensor: untie to load it
            model.config.tie_word_embeddings = False
            model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        sd = {("lm_head.weight" if k == "embed_out.weight" else k): torch.from_numpy(np.asarray(v, np.float32))
              for k, v in folded.items()}
        model.load_state_dict(sd, strict=True)
        got = model(torch.tensor([probe])).logits[0].numpy()
    rel = np.abs(got - want).max() / np.abs(want).max()
    print(f"{variant}: AWQ fold, max relative logit change {rel:.2e}")
    assert rel < 1e-5


# ---------------------------------------------------------------- through convert_weights


DATA = Path(hf2mlc.__file__).with_name("data")


def _calibration_file(path: Path) -> Path:
    """Japanese documents that are not the evaluation text: the tokenizer cases, one document each."""
    lines = (DATA / "tokenizer_cases_ja.txt").read_text(encoding="utf-8").splitlines()
    docs = [json.loads(line) for line in lines if line.startswith('"')]
    path.write_text("\n\n".join(d.replace("\n\n", "\n") for d in docs if d.strip()), encoding="utf-8")
    return path


def _hf_rows(rows: np.ndarray, heads: int) -> np.ndarray:
    """MLC's qkv rows [(q|k|v), head, d] back to Hugging Face's [head, (q|k|v), d]."""
    return np.ascontiguousarray(rows.reshape(3, heads, -1, *rows.shape[1:]).swapaxes(0, 1)).reshape(rows.shape)


def _decoded_state(weights_dir: Path, config: GPTNeoXConfig, name: str) -> dict[str, np.ndarray]:
    """Every tensor of a converted bundle as the model will see it, decoded with :func:`mlc_dequantize`."""
    cache = read_tensor_cache(weights_dir)
    in_features = {"dense_4h_to_h": config.intermediate_size}
    state = {}
    for key, array in cache.items():
        if key.endswith(".q_scale"):
            continue
        if key.endswith(".q_weight"):
            base = key[: -len(".q_weight")]
            scale = cache[f"{base}.q_scale"]
            if base == "gpt_neox.embed_in":  # never transposed: decode as NK
                array = mlc_dequantize(array, scale, "q3f16_1" if "q3" in name else "q4f16_1", config.hidden_size)
            else:
                array = mlc_dequantize(array, scale, name, in_features.get(base.rsplit(".", 1)[-1], config.hidden_size))
            key = f"{base}.weight"
        array = np.asarray(array, np.float32)
        if ".query_key_value." in key:
            array = _hf_rows(array, config.num_attention_heads)
        state[key] = array
    return state


def _logits(model, state: dict[str, np.ndarray] | None, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        if state is not None:
            model.config.tie_word_embeddings = False
            model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
            sd = {("lm_head.weight" if k == "embed_out.weight" else k): torch.from_numpy(v) for k, v in state.items()}
            model.load_state_dict(sd, strict=True)
        return model(torch.tensor([ids])).logits[0].double().numpy()


def _mean_kl(ref: np.ndarray, got: np.ndarray) -> float:
    lp = ref - np.logaddexp.reduce(ref, axis=-1, keepdims=True)
    lq = got - np.logaddexp.reduce(got, axis=-1, keepdims=True)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


@pytest.fixture(scope="module")
def bundle_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrated-convert")
    calib = _calibration_file(root / "calib.txt")
    model_dir = make_tiny_model(root / "hf", "line", seed=5, vocab_size=256, hidden_size=80, intermediate_size=320)
    add_char_tokenizer(model_dir, [calib.read_text(encoding="utf-8"), (DATA / "eval_ja.txt").read_text(encoding="utf-8")], 256)
    return root, model_dir, calib


@pytest.mark.parametrize("name", ["q3f16_1", "q4f16_0"])
def test_convert_with_each_method_decodes_and_beats_rtn(bundle_model, name):
    root, model_dir, calib = bundle_model
    config = GPTNeoXConfig.from_file(model_dir)
    encode = load_tokenizer(model_dir).encode
    probe = encode((DATA / "eval_ja.txt").read_text(encoding="utf-8"))[:96]
    model = load_reference(model_dir)
    want = _logits(model, None, probe)
    kl = {}
    for method in METHODS:
        out = root / f"w-{name}-{method}"
        stats = convert_weights(model_dir, out, name, method=method, calibration_text=str(calib),
                                calibration_tokens=600, evaluation_text="eval_ja", progress=False)
        assert stats["method"] == method
        if method != "rtn":
            assert stats["calibration"]["tokens"] == 600 and stats["calibration"]["segments"] >= 2
            errors = stats["reconstruction_error"]  # every quantized module, each losing a small share
            assert len(errors) == 2 + 4 * config.num_hidden_layers and all(0 < e < 0.2 for e in errors.values())
        kl[method] = _mean_kl(want, _logits(load_reference(model_dir), _decoded_state(out, config, name), probe))
    print(f"{name}: mean KL to the float model: " + ", ".join(f"{m} {v:.4f}" for m, v in kl.items()))
    for method in METHODS:
        if method != "rtn":
            assert kl[method] < kl["rtn"], (method, kl)


def test_calibration_text_must_be_disjoint_from_the_evaluation_text(bundle_model, tmp_path):
    _root, model_dir, _calib = bundle_model
    with pytest.raises(UserError, match="also in the evaluation text"):
        convert_weights(model_dir, tmp_path / "w", "q4f16_0", method="awq", calibration_text="eval_ja",
                        evaluation_text="eval_ja", progress=False)
    assert not (tmp_path / "w").exists()
    with pytest.raises(UserError, match="not quantized"):
        convert_weights(model_dir, tmp_path / "w", "q0f16", method="awq", progress=False)


def test_gptq_in_column_runs_sits_between_the_search_and_full_gptq():
    q = get_quantization("q3f16_1")
    weight, x = realish(6, n=32, k=320)
    hessian = x.T.astype(np.float64) @ x / len(x)
    full = output_error(x, weight, decode(*gptq(weight, hessian, q), q))
    runs_codes, runs_scale = gptq(weight, hessian, q, max_columns=100)  # runs of 80 columns (2 groups of 40)
    for a in range(0, 320, 80):  # each run is exactly GPTQ of its own columns
        c, s = gptq(weight[:, a:a + 80], hessian[a:a + 80, a:a + 80], q)
        np.testing.assert_array_equal(runs_codes[:, a:a + 80], c)
        np.testing.assert_array_equal(runs_scale[:, a // 40:(a + 80) // 40], s)
    runs = output_error(x, weight, decode(runs_codes, runs_scale, q))
    search = output_error(x, weight, decode(*search_scales(weight, q, np.diag(hessian)), q))
    print(f"q3f16_1 output error: search {search:.4g}, GPTQ in runs of 80 {runs:.4g}, full GPTQ {full:.4g}")
    assert full < runs < search


def test_schema_names_exactly_the_registered_methods():
    import yaml

    from hf2mlc.spec import CALIBRATED_METHOD_PATTERN, CalibrationSpec

    schema = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "schema.yaml").read_text(encoding="utf-8"))
    assert schema["$defs"]["method"]["enum"] == list(METHODS)
    assert CALIBRATED_METHOD_PATTERN.split("|") == [m for m in METHODS if m != "rtn"]
    spec = CalibrationSpec.create("awq", "my.txt", 512, "eval_ja")
    assert CalibrationSpec.from_params(spec.as_params()) == spec
    assert CalibrationSpec.create("rtn").as_params() == {"method": "rtn"}


def test_workflow_plans_calibrated_weights_for_a_device_and_refuses_two_methods_per_quantization(tmp_path):
    """A device's `method:` sends its weights (and its quantization's check and evaluation) through rule
    convert_calibrated into a path of their own; rtn's path, and so the default demo, is unchanged."""
    import yaml

    from workflow_helpers import copy_workflow, planned_jobs, snakemake

    work = copy_workflow(tmp_path / "wf")
    config_path = work / "config" / "config.yaml"
    cfg = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    cfg["defaults"]["targets"]["iphone"]["method"] = "awq"
    config_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    jobs = planned_jobs(work, "iphone_bundle")
    assert "convert_calibrated[model=demo,quant=q4f16_0,method=awq]" in jobs
    assert "convert[model=demo,quant=q0f16]" in jobs and not any(j.startswith("convert[model=demo,quant=q4f16_0") for j in jobs)
    dry = snakemake(work, "--dry-run", "--printshellcmds", "iphone_bundle").stdout
    assert "results/weights/demo/q4f16_0-awq" in dry
    cfg["defaults"]["targets"]["mac"] = {**cfg["defaults"]["targets"]["mac"], "quantization": "q4f16_0", "method": "gptq"}
    config_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    proc = snakemake(work, "--dry-run", "iphone_bundle", check=False)
    assert proc.returncode != 0 and "must share its method" in proc.stdout + proc.stderr


@pytest.mark.parametrize("variant", ["line", "pythia"])
def test_embedding_fisher_equals_transformers_autograd(tiny, variant):
    """The streamed, layer-by-layer recomputed gradient at the embedding's output against transformers'
    own backward pass of the next-token loss; and GPTQ with it beats the plain search on the loss's
    second-order change ``Σ_rows δ F δᵀ`` of the quantized embedding."""
    from hf2mlc.quantization.calibration import embedding_fisher, embedding_plan
    from hf2mlc.reference import CheckpointWeights

    model_dir = tiny[variant]
    config = GPTNeoXConfig.from_file(model_dir)
    rng = np.random.default_rng(7)
    segments = [rng.integers(0, 128, n).astype(np.int64) for n in (24, 17, 30)]
    weights = CheckpointWeights(model_dir, config)
    try:
        fisher = embedding_fisher(config, weights, segments)
        embed = weights("gpt_neox.embed_in.weight")
    finally:
        weights.close()
    model = load_reference(model_dir)
    grads, targets = [], 0
    for seg in segments:
        captured = {}
        handle = model.gpt_neox.embed_in.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
        logits = model(input_ids=torch.from_numpy(seg)[None], use_cache=False).logits[0]
        handle.remove()
        loss = torch.nn.functional.cross_entropy(logits[:-1].float(), torch.tensor(seg[1:]), reduction="sum")
        grads.append(torch.autograd.grad(loss, captured["x"])[0][0].double().numpy())
        targets += len(seg) - 1
    g = np.concatenate(grads)
    want = g.T @ g / targets
    assert fisher.shape == (config.hidden_size, config.hidden_size) and fisher.dtype == np.float32
    np.testing.assert_allclose(fisher, want, rtol=2e-3, atol=2e-4 * np.abs(want).max())

    stats = CalibrationStats(hessians=True)
    assert embedding_plan(stats) is None  # no Fisher: the embedding keeps the plain search
    stats.embedding_fisher = fisher
    plan = embedding_plan(stats)
    q = get_quantization("q3f16_1")
    codes, scale = gptq(embed, plan.hessian, q)

    def loss_change(decoded):
        d = embed.astype(np.float64) - decoded
        return float(np.einsum("vi,ij,vj->", d, want, d))

    searched, compensated = loss_change(decode(*search_scales(embed, q), q)), loss_change(decode(codes, scale, q))
    print(f"{variant}: embedding δFδᵀ, GPTQ with the Fisher / plain search = {compensated / searched:.3f}")
    assert compensated < 0.8 * searched
