"""The reference artefact and the quality evaluation, against transformers and exact numpy formulas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hf2mlc import evaluate, reference_cache, stages
from hf2mlc.evaluation_text import DATA, load_evaluation_text
from tiny_models import load_reference, make_tiny_model, reference_logits

CONTEXT = 64
FAMILIES = [str(Path(__file__).resolve().parents[1] / "config" / "families" / f"{name}.yaml") for name in ("line", "seed-compat")]


def _exact_kl(ref_logits: np.ndarray, build_logits: np.ndarray) -> np.ndarray:
    lp, lq = evaluate._log_softmax(ref_logits), evaluate._log_softmax(build_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def test_kl_bounds_bracket_the_exact_kl():
    rng = np.random.default_rng(0)
    ref = (rng.normal(size=(200, 300)) * rng.uniform(0.5, 4, size=(200, 1))).astype(np.float32).astype(np.float64)
    build = ref + rng.normal(scale=0.3, size=ref.shape)
    exact = _exact_kl(ref, build)
    logq, lse = evaluate._log_softmax(build), reference_cache.log_sum_exp(ref)
    for k in (1, 20, 299):
        ids, top = reference_cache.top_k(ref.astype(np.float32), k)
        low, high, tail = evaluate.kl_bounds(logq, ids, top, lse)
        assert np.all(low <= exact + 1e-9) and np.all(exact <= high + 1e-9), k
        assert np.all((tail >= 0) & (tail <= 1))
    ids, top = reference_cache.top_k(ref.astype(np.float32), 300)  # everything stored: exact
    low, high, _ = evaluate.kl_bounds(logq, ids, top, lse)
    np.testing.assert_allclose(low, exact, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(high, exact, rtol=1e-5, atol=1e-7)


def test_top_k_and_log_sum_exp_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 50)).astype(np.float32)
    x[0, :5] = 3.0  # ties break towards the lower id
    ids, top = reference_cache.top_k(x, 6)
    np.testing.assert_array_equal(ids, np.argsort(-x, axis=-1, kind="stable")[:, :6])
    np.testing.assert_array_equal(top, -np.sort(-x, axis=-1)[:, :6])
    np.testing.assert_allclose(reference_cache.log_sum_exp(x), np.log(np.exp(x.astype(np.float64)).sum(-1)), rtol=1e-12)


def test_batch_means_interval():
    rng = np.random.default_rng(2)
    values = rng.normal(loc=1.0, size=6400)
    interval = evaluate.mean_interval(values, block=64)
    half = (interval["high"] - interval["low"]) / 2
    assert interval["blocks"] == 100 and interval["low"] < 1.0 < interval["high"]
    assert half == pytest.approx(1.984 / 80, rel=0.15)  # iid: about t(99) · σ / √n
    assert evaluate._t_quantile_975(10) == pytest.approx(2.2281, abs=2e-3)
    # Correlated losses (runs of 32 equal values) widen the interval, as they should.
    runs = np.repeat(rng.normal(size=200), 32)
    assert evaluate.mean_interval(runs, block=64)["high"] - evaluate.mean_interval(runs, block=64)["low"] > 4 * half


# ---------------------------------------------------------------- end to end on a tiny model


def _char_tokenizer(model_dir, vocab_size: int) -> None:
    """A character-level tokenizer.json over the bundled text (ids 0-2: <unk>, <s>, </s>)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = sorted(set((DATA / "eval_ja.txt").read_text(encoding="utf-8")) | set((DATA / "chat_prompts_ja.txt").read_text(encoding="utf-8")))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars[: vocab_size - 3])}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.save(str(model_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A LINE-shaped tiny model with a tokenizer, its q4f16_0 host build, and its reference artefact."""
    from hf2mlc.compile import compile_model
    from hf2mlc.convert import convert_weights
    from hf2mlc.model.gpt_neox.config import GPTNeoXConfig
    from hf2mlc.spec import TargetSpec

    root = tmp_path_factory.mktemp("evaluate")
    model_dir = make_tiny_model(root / "hf", "line", vocab_size=512, max_position_embeddings=CONTEXT)
    _char_tokenizer(model_dir, 512)
    weights = root / "weights"
    convert_weights(model_dir, weights, "q4f16_0", ffn_out_dtype="float32", progress=False)
    spec = TargetSpec.create(target="host", quantization="q4f16_0", lib_name="tiny-q4", context_window_size=CONTEXT,
                             prefill_chunk_size=16, ffn_out_dtype="float32")
    info = compile_model(GPTNeoXConfig.from_file(model_dir), spec, root / "lib", progress=False)
    ref_dir, answers_dir = root / "reference", root / "answers"
    stages.reference(model_dir=model_dir, out_dir=ref_dir, text="eval_ja", max_tokens=300, max_len=CONTEXT)
    stages.reference_answers(
        model_dir=model_dir, out_dir=answers_dir, family_files=FAMILIES, prompts="chat_prompts_ja", answer_tokens=6
    )
    return model_dir, weights, root / "lib" / info["files"][0], ref_dir, answers_dir


def test_reference_artefact_equals_transformers(tiny):
    model_dir, _, _, ref_dir, answers_dir = tiny
    ref = reference_cache.read_reference(ref_dir, answers_dir)
    text = load_evaluation_text(model_dir, "eval_ja", max_tokens=300, max_len=CONTEXT)
    assert [r.tolist() for r in ref.rows()] == [i for i, _ in text.rows]
    assert max(len(i) for i, _ in text.rows) == CONTEXT  # long documents are cut into windows, none dropped
    assert ref.targets.tolist() == [t for _, ti in text.rows for t in ti] and len(ref.targets) == 300
    model = load_reference(model_dir)
    logits = np.concatenate([reference_logits(model, i) for i, _ in text.rows]).astype(np.float64)
    lse = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(ref.lse, lse, rtol=1e-5)
    np.testing.assert_allclose(ref.target_logprob, logits[np.arange(300), ref.targets] - lse, rtol=1e-5, atol=1e-5)
    assert ref.top_ids.shape == (300, 512)  # vocabulary below TOP_K: everything kept, KL exact
    assert np.mean(ref.top_ids[:, 0] == logits.argmax(-1)) == 1.0
    summary = json.loads((ref_dir / "reference.json").read_text(encoding="utf-8"))
    assert summary["text"]["sha256"] == text.sha256 and summary["text"]["tokens_sha256"] == text.tokens_sha256()
    manifest = json.loads((ref_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["text"]["sha256"] == text.sha256 and manifest["model"]["digest"] == manifest["inputs"]["model"]
    # Greedy answers, for both templates: what transformers' own greedy decoding gives.
    import torch

    answers = ref.answers
    assert {a["template"] for a in answers} == {"line", "seed-compat"} and len(answers) == 2 * 3
    for a in answers[:3] + answers[-2:]:
        out = model.generate(torch.tensor([a["prompt_ids"]]), max_new_tokens=6, do_sample=False,
                             eos_token_id=a["stop_token_ids"] or None, pad_token_id=0)
        assert a["answer_ids"] == out[0, len(a["prompt_ids"]):].tolist()
    assert answers[0]["prompt"] == "ユーザー: 四国の県名を全て列挙してください。\nシステム: "


def test_evaluation_of_a_quantized_build(tiny, tmp_path):
    from hf2mlc.runtime import Engine

    model_dir, weights, lib, ref_dir, answers_dir = tiny
    report = evaluate.evaluate_build(model_dir, weights, lib, "q4f16_0", ref_dir, answers_dir, tmp_path)
    ref = reference_cache.read_reference(ref_dir, answers_dir)
    engine = Engine(lib, weights)
    build = []
    for row in ref.rows():
        engine.reset()
        build.append(engine.logits_all(row.tolist()))
    build = np.concatenate(build)
    model = load_reference(model_dir)
    reference = np.concatenate([reference_logits(model, r.tolist()) for r in ref.rows()])
    kl = _exact_kl(reference, build)
    nll = -evaluate._log_softmax(build)[np.arange(300), ref.targets]
    assert report["kl_mean"] == pytest.approx(kl.mean(), rel=1e-4)
    assert report["kl_p99"] == pytest.approx(np.quantile(kl, 0.99), rel=1e-4)
    assert report["kl_mean"] > 1e-4  # 4-bit weights do cost something on a random model
    assert report["build"]["perplexity"] == pytest.approx(math.exp(nll.mean()), rel=1e-5)
    assert report["top1_agreement"] == pytest.approx(np.mean(build.argmax(-1) == reference.argmax(-1)))
    low, high = report["build"]["perplexity_ci95"]
    assert low < report["build"]["perplexity"] < high
    lo, hi = report["delta_perplexity_pct_ci95"]
    assert lo < report["delta_perplexity_pct"] < hi
    assert len(report["answers"]) == 6
    for a in report["answers"]:  # the build's answers are the engine's own greedy decoding
        assert set(a) >= {"template", "message", "reference", "build", "same_tokens"}
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| seed-compat |" in md and f"{report['kl_mean']:.5f}" in md


def test_kl_from_a_truncated_reference_is_bracketed(tiny, tmp_path, monkeypatch):
    """With fewer stored tokens than the vocabulary, the reported KL is the lower bound and the upper bound holds."""
    model_dir, weights, lib, _, answers_dir = tiny
    monkeypatch.setattr(reference_cache, "TOP_K", 8)
    ref_dir = tmp_path / "ref8"
    stages.reference(model_dir=model_dir, out_dir=ref_dir, text="eval_ja", max_tokens=100, max_len=CONTEXT)
    report = evaluate.evaluate_build(model_dir, weights, lib, "q4f16_0", ref_dir, answers_dir, tmp_path)
    assert report["reference_tail_mass_mean"] > 0.1
    ref = reference_cache.read_reference(ref_dir, answers_dir)
    from hf2mlc.runtime import Engine

    engine = Engine(lib, weights)
    build = np.concatenate([(engine.reset(), engine.logits_all(r.tolist()))[1] for r in ref.rows()])
    model = load_reference(model_dir)
    kl = _exact_kl(np.concatenate([reference_logits(model, r.tolist()) for r in ref.rows()]), build).mean()
    assert report["kl_mean"] <= kl * (1 + 1e-4) and kl <= report["kl_mean_upper_bound"] * (1 + 1e-4)
    assert report["kl_mean"] < 0.9 * kl  # a real gap: the bound is not the exact value by accident


def test_host_check_against_the_streaming_dequantized_reference(tiny):
    """The check passes a correct quantized build at float16 rounding and fails, in one line, above its bound."""
    from hf2mlc.check import check_host_build
    from hf2mlc.errors import UserError

    model_dir, weights, lib, _, _ = tiny
    report = check_host_build(model_dir, weights, lib, "q4f16_0", evaluation_text="eval_ja", max_rel_error=2e-2)
    assert report["passed"] and 0 < report["max_rel_error"] < 5e-3 and report["argmax_agreement"] == 1.0
    assert "dequantized" in report["reference"]
    with pytest.raises(UserError, match="max_logit_rel_error"):
        check_host_build(model_dir, weights, lib, "q4f16_0", evaluation_text="eval_ja", max_rel_error=1e-7)


def test_evaluation_text_is_a_bundled_set_or_a_file(tiny, tmp_path):
    from hf2mlc.errors import UserError

    model_dir = tiny[0]
    (tmp_path / "mine.txt").write_text("一つ目の文書です。\n\n二つ目。\n", encoding="utf-8")
    text = load_evaluation_text(model_dir, "mine.txt", max_tokens=1000, max_len=CONTEXT, base_dir=tmp_path)
    assert text.name == "mine.txt" and len(text.rows) == 2 and text.tokens == len("一つ目の文書です。") + len("二つ目。")
    assert text.rows[1] == ([text.rows[1][0][0], *text.rows[1][1][:-1]], text.rows[1][1]) and text.rows[1][1][-1] == 2
    with pytest.raises(UserError, match="not a bundled set"):
        load_evaluation_text(model_dir, "no_such_set", max_tokens=10, max_len=CONTEXT)
    with pytest.raises(UserError, match="does not exist"):
        load_evaluation_text(model_dir, "missing.txt", max_tokens=10, max_len=CONTEXT, base_dir=tmp_path)
    with pytest.raises(UserError, match="heldout.txt"):
        load_evaluation_text(model_dir, "demo_heldout", max_tokens=10, max_len=CONTEXT)
