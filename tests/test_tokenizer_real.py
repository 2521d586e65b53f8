"""Real SentencePiece models and a real tokenizer.json, on every line of a real novel and real English text.

The three SentencePiece models differ where tokenizers differ (normalizer, byte fallback, vocabulary):
rinna's (nmt_nfkc, no byte fallback), llm-jp's v2.2 (identity normalizer, byte fallback; the closest
public relative of LINE's) and SentencePiece's own Japanese test model (nfkc).  The bundle ships each as
``tokenizer.model``; the reference for every id and decoded string is the ``sentencepiece`` library on the
original file.  The converted tokenizer.json is measured too (slow test), and each line where it differs
must be explained by arithmetic alone: a tie or near-tie that float32 and float64 lattice sums decide
differently.
"""

from __future__ import annotations

import json
import shutil
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from hf2mlc.tokenizer import bundle, proto, stage
from shared_data import english_lines, novel_lines, shared_file

MODELS = {
    "rinna": "google_sp.model",
    "llm-jp-v2.2": "code10K_en20K_ja30K.ver2.2.model",
    "sentencepiece-test-ja": "test_ja_model.model",
}


def _real_model_dir(name: str, tmp: Path) -> tuple[Path, Path]:
    source = shared_file("tokenizers", MODELS[name])
    model_dir = tmp / name
    model_dir.mkdir()
    shutil.copyfile(source, model_dir / "spiece.model")  # test-time scratch copy, never in the project
    return source, model_dir


@pytest.fixture(scope="module", params=list(MODELS))
def staged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path, dict]:
    source, model_dir = _real_model_dir(request.param, tmp_path_factory.mktemp("real"))
    out = model_dir.parent / f"{request.param}-tokenizer"
    report = stage.build_tokenizer(model_dir, out, alternative=False)
    return request.param, source, out, report


def test_stage_accepts_the_real_model(staged: tuple[str, Path, Path, dict]) -> None:
    """The stage's own gate on its 417 cases: rinna's model used to be refused here (7 cases differed)."""
    _, _, out, report = staged
    assert report["parity"] == 1.0 and report["cases"] >= 400
    assert sorted(p.name for p in out.iterdir()) == ["parity-report.json", "tokenizer.model"]


def test_shipped_tokenizer_is_sentencepiece_on_every_line(staged: tuple[str, Path, Path, dict]) -> None:
    name, source, out, _ = staged
    lines = novel_lines() + english_lines()
    start = time.perf_counter()
    shipped = bundle.bundle_tokenizer(out)
    reference = spm.SentencePieceProcessor(model_file=str(source))
    expected = reference.encode(lines)
    got = [shipped.encode(line) for line in lines]
    ids_differ = [i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
    text_differ = [i for i, ids in enumerate(got) if shipped.decode(ids) != reference.decode(expected[i])]
    seconds = time.perf_counter() - start
    tokens = sum(map(len, expected))
    byte_tokens = sum(1 for ids in expected for i in ids if reference.is_byte(i))
    print(f"\n{name}: {len(lines)} lines, {tokens} tokens, {byte_tokens} byte-fallback tokens; shipped "
          f"tokenizer.model = SentencePiece on {len(lines) - len(ids_differ)} lines (ids), "
          f"{len(lines) - len(text_differ)} (text), {seconds:.2f} s")
    assert len(lines) > 2800 and tokens > 200_000
    assert ids_differ == [] and text_differ == []


def _sums(reference: spm.SentencePieceProcessor, ids: list[int]) -> tuple[np.float32, float]:
    """A path's score as SentencePiece's Viterbi accumulates it (float32, in order) and in float64."""
    total32 = np.float32(0)
    for i in ids:
        total32 = np.float32(total32 + np.float32(reference.get_score(i)))
    return total32, sum(float(np.float32(reference.get_score(i))) for i in ids)


def _probes() -> list[str]:
    """Where tokenizers disagree for reasons other than text: repeated-symbol runs, whitespace runs,
    characters outside the vocabulary, pieces that look like control pieces."""
    runs = [wrap.format(ch * n) for ch in "-ー=.。!?~*＊ 　\t_" for n in (1, 2, 3, 5, 8, 16, 33, 64)
            for wrap in ("{}", "あ{}い", "word{}word")]
    return runs + ["😀😀", "吾輩😀😀は猫", "𠮷野家", "☃☃☃", "Ω≈ç√∫", "  a  b  ", "a\n\nb", "<unk>", "</s>", "<0x41>"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_tokenizer_json_alternative_differs_only_by_arithmetic(name: str, tmp_path: Path) -> None:
    """The approach not shipped, measured: rinna's model differs on 3 novel lines, llm-jp's on 1, and both
    on repeated-symbol runs; every one is a tie or near-tie (float64 scores equal to a millionth), where
    SentencePiece's float32 sums favour its path and the Rust library's float64 sums favour its own —
    besides the converter's known limit (a control piece typed as text, no byte fallback)."""
    from tokenizers import Tokenizer

    source, model_dir = _real_model_dir(name, tmp_path)
    stage.measure_tokenizer_json(model_dir, tmp_path / "json", [])
    fast = Tokenizer.from_file(str(tmp_path / "json" / "tokenizer.json"))
    reference = spm.SentencePieceProcessor(model_file=str(source))
    counts = {}
    for label, lines in (("novel", novel_lines()), ("english", english_lines()), ("probes", _probes())):
        expected = reference.encode(lines)
        got = [e.ids for e in fast.encode_batch(lines, add_special_tokens=False)]
        differ = [i for i in range(len(lines)) if got[i] != expected[i]]
        counts[label] = (len(lines), len(differ))
        for i in differ:
            if any(reference.is_control(t) for t in got[i]):
                # The converter's known limit: a control piece typed as text in a model without byte
                # fallback (SentencePiece reads its characters; tokens declared special are cut out instead).
                assert label == "probes" and not proto.read_sentencepiece(source).byte_fallback, lines[i]
                continue
            sp32, sp64 = _sums(reference, expected[i])
            hf32, hf64 = _sums(reference, got[i])
            assert abs(sp64 - hf64) <= 1e-6 * abs(sp64) + 1e-4, (lines[i], sp64, hf64)  # a (near-)tie
            assert sp32 >= hf32 and hf64 >= sp64, (lines[i], sp32, hf32, sp64, hf64)  # each wins in its arithmetic
            assert fast.decode(got[i]) == reference.decode(expected[i])  # the same text either way
    parity = {k: f"{(n - d) / n:.4%}" for k, (n, d) in counts.items()}
    print(f"\n{name}: tokenizer.json alternative, lines (total, differ) {counts}; parity {parity}")
    assert counts["english"][1] == 0


def test_gpt_neox_20b_tokenizer_json(tmp_path: Path) -> None:
    """Pythia's / GPT-NeoX-20B's byte-level BPE tokenizer.json: validated against a Pythia config, shipped as
    it is, tokenizer_info as MLC detects it, and every real line round-trips (NFC, its normalizer)."""
    source = shared_file("tokenizers", "20B_tokenizer.json")
    model_dir = tmp_path / "pythia"
    model_dir.mkdir()
    shutil.copyfile(source, model_dir / "tokenizer.json")
    (model_dir / "config.json").write_text(json.dumps(
        {"model_type": "gpt_neox", "vocab_size": 50304, "bos_token_id": 0, "eos_token_id": 0}))
    (model_dir / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
         "tokenizer_class": "GPTNeoXTokenizer"}))
    report = stage.build_tokenizer(model_dir, tmp_path / "out")
    assert report["parity"] == 1.0 and report["round_trip_judged"] == report["cases"]
    assert report["mlc"]["tokenizer_info"] == {"token_postproc_method": "byte_level",
                                               "prepend_space_in_encode": False, "strip_space_in_decode": False}
    assert report["tokenizer"]["model_type"] == "BPE" and report["tokenizer"]["normalizer"] == ["NFC"]
    # Special tokens Pythia's tokenizer_config.json does not declare (<|padding|>, and four of a later fine-tune):
    # the report names them, since MLC will cut them out of any text that contains them.
    assert report["undeclared_special_tokens"] == ["<|padding|>", "<|im_start|>", "<|im_end|>", "assistant", "RWKV"]
    shipped = bundle.bundle_tokenizer(tmp_path / "out")
    lines = novel_lines() + english_lines()
    start = time.perf_counter()
    lost = [line for line in lines if shipped.decode(shipped.encode(line)) != unicodedata.normalize("NFC", line)]
    print(f"\n20B_tokenizer.json: {len(lines)} lines round-trip except {len(lost)} ({time.perf_counter() - start:.2f} s)")
    assert lost == []
