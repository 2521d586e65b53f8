"""The quality benchmark's pieces that decide its numbers: text cleaning, splits, windows, scoring, goals.

The full benchmark (a 23M-parameter model trained for ~25 minutes) is too slow for the suite; these check
what it computes against independent computations (torch's losses) on small inputs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import quality, quality_model  # noqa: E402

AOZORA = """吾輩は試験である\r
作者\r
-------------------------------------------------------\r
【テキスト中に現れる記号について】\r
《》：ルビ\r
-------------------------------------------------------\r
［＃８字下げ］一［＃「一」は中見出し］\r
　吾輩《わがはい》は試験である。名前は一番｜獰悪《どうあく》だ。\r
　※［＃「言＋墟のつくり」、第4水準2-88-74］を見た。\r
\r
　最後の段落。\r
底本：「どこかの全集」\r
入力：だれか\r
"""


def test_clean_aozora_strips_markup_header_and_colophon() -> None:
    assert quality_model.clean_aozora(AOZORA) == [
        "一",
        "吾輩は試験である。名前は一番獰悪だ。",
        "を見た。",
        "最後の段落。",
    ]


def test_splits_are_disjoint_whole_blocks_covering_the_text() -> None:
    paragraphs = [f"段落{i}。" + "あ" * (50 + i % 97) for i in range(3000)]
    splits = quality_model.split_paragraphs(paragraphs)
    assert sorted(sum(splits.values(), [])) == sorted(paragraphs)
    assert set(splits["train"]).isdisjoint(splits["heldout"]) and set(splits["heldout"]).isdisjoint(splits["calibration"])
    total = sum(map(len, paragraphs))
    for name in ("heldout", "calibration"):
        share = sum(map(len, splits[name])) / total
        assert share == pytest.approx(1 / quality_model.SPLIT_PERIOD, rel=0.15), name
    # Whole blocks: the held-out split is a few runs of consecutive paragraphs, not scattered ones.
    index = {p: i for i, p in enumerate(paragraphs)}
    positions = [index[p] for p in splits["heldout"]]
    runs = 1 + sum(1 for a, b in zip(positions, positions[1:]) if b != a + 1)
    assert runs <= math.ceil(total / quality_model.BLOCK_CHARS / quality_model.SPLIT_PERIOD) + 1


def test_eval_windows_are_back_to_back_with_next_token_targets() -> None:
    ids = list(range(1000))
    windows = quality_model.eval_windows(ids, 256)
    assert len(windows) == 3
    for k, (inputs, targets) in enumerate(windows):
        assert inputs == ids[256 * k : 256 * (k + 1)] and targets == ids[256 * k + 1 : 256 * (k + 1) + 1]


def test_score_matches_torch_losses() -> None:
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    windows = [(rng.normal(size=(64, 50)) * 3, rng.normal(size=(64, 50)) * 3, rng.integers(0, 50, 64)) for _ in range(5)]
    score, deltas, nll_build, nll_ref, kls, agree = quality.Score(), [], [], [], [], []
    for ref, build, targets in windows:
        # The build is the reference plus noise, so KL and Δ are small and positive, as after quantization.
        build = ref + 0.3 * build
        score.add(quality._log_softmax(ref), quality._log_softmax(build), targets)
        r, b, t = torch.tensor(ref), torch.tensor(build), torch.tensor(targets)
        nr, nb = F.cross_entropy(r, t, reduction="none"), F.cross_entropy(b, t, reduction="none")
        deltas.append(float((nb - nr).mean()))
        nll_build.append(nb)
        nll_ref.append(nr)
        kls.append(F.kl_div(F.log_softmax(b, -1), F.log_softmax(r, -1), log_target=True, reduction="none").sum(-1))
        agree.append(b.argmax(-1) == r.argmax(-1))
    reference_ppl = math.exp(float(torch.cat(nll_ref).mean()))
    got = score.summary(reference_ppl)
    assert got["perplexity"] == pytest.approx(math.exp(float(torch.cat(nll_build).mean())), rel=1e-9)
    kl = torch.cat(kls)
    assert got["kl_mean"] == pytest.approx(float(kl.mean()), rel=1e-9)
    assert got["kl_p99"] == pytest.approx(float(torch.quantile(kl, 0.99)), rel=1e-9)
    assert got["top1"] == pytest.approx(float(torch.cat(agree).double().mean()))
    mean, se = float(np.mean(deltas)), float(np.std(deltas, ddof=1) / math.sqrt(len(deltas)))
    assert got["delta_ppl_pct"] == pytest.approx((math.exp(mean) - 1) * 100, rel=1e-9)
    low, high = got["delta_ppl_pct_ci95"]
    assert low < got["delta_ppl_pct"] < high
    assert math.log1p(high / 100) - math.log1p(low / 100) == pytest.approx(2 * 1.959964 * se, rel=1e-6)
    assert got["tokens"] == 320 and got["windows"] == 5


def test_stand_in_row_is_read_from_results_md() -> None:
    row = quality.stand_in_rtn_row()
    assert row is not None
    line = next(l for l in quality.RESULTS_MD.read_text(encoding="utf-8").splitlines() if l.startswith("| `q4f16_0` hf2mlc (fast path)"))
    assert f"**{row['wall']}**" in line and row["peak_rss"] in line and row["bits_per_param"] in line
    assert row["wall"].endswith(" s") and "MiB" in row["peak_rss"]


def _row(kl: float, delta: float, check: float = 1e-3) -> dict:
    return {"kl_mean": kl, "delta_ppl_pct": delta, "check_max_rel_error": check}


def test_goals_are_marked_met_or_not() -> None:
    rows = {("rtn", "q4f16_0"): _row(0.04, 4.0), ("gptq", "q4f16_0"): _row(0.019, 1.9), ("awq", "q4f16_0"): _row(0.03, 1.0),
            ("gptq", "q3f16_0"): _row(0.05, 3.0), ("none", "q0f16"): _row(0.0, 0.0, 0.5)}
    goals = {g[0]: g[3] for g in quality.goals(rows)}
    assert goals["best calibrated q4f16_0 (gptq) ≤ ½ RTN q4f16_0: mean KL"] == "met"
    assert goals["best calibrated q4f16_0 (gptq) ≤ ½ RTN q4f16_0: Δ perplexity"] == "met"
    assert goals["best calibrated 3-bit (gptq q3f16_0) no worse than RTN q4f16_0"] == "not met"  # KL 0.05 > 0.04
    check = next(v for k, v in goals.items() if k.startswith("every calibrated build"))
    assert check == "met"  # the control's 0.5 is not a calibrated build
    only_rtn = quality.goals({("rtn", "q4f16_0"): _row(0.04, 4.0)})
    assert [g[3] for g in only_rtn] == ["not measured"] * 3


def test_fit_windows_keeps_the_first_and_spreads_the_rest() -> None:
    windows = list(range(49))
    assert quality.fit_windows(windows, 80.0, 49 * 80.0) == windows
    fitted = quality.fit_windows(windows, 80.0, 14 * 80.0 + 1)  # the first, scored, plus 14 more
    assert len(fitted) == 15 and fitted[0] == 0 and fitted[-1] == 48
    assert len(set(fitted)) == 15 and sorted(fitted) == fitted
    gaps = np.diff(fitted)
    assert gaps.max() - gaps.min() <= 1  # evenly spaced
    assert quality.fit_windows(windows, 80.0, 0.0) == [0, 48]  # never fewer than two
