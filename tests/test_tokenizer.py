"""spiece.model → tokenizer.json, checked against SentencePiece itself.

The tests train their own small SentencePiece models (a second or less each): one like LINE's (unigram,
byte fallback, LINE's special ids, nmt_nfkc with "\\n" kept as a user-defined piece, like the demo model),
one without byte fallback, and one with the other whitespace options.  The reference for every token id
and decoded string is the ``sentencepiece`` library (and transformers' slow tokenizer), never this code.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer

from hf2mlc import tokenizer as tk
from hf2mlc.errors import UserError

WORDS = (
    "私 あなた 今日 明日 天気 東京 大阪 日本 日本語 学校 先生 学生 会社 電車 料理 寿司 ラーメン コーヒー お茶 水 山 川 "
    "海 空 雨 雪 春 夏 秋 冬 朝 夜 時間 仕事 旅行 写真 音楽 映画 本 言葉 質問 答え 問題 説明 研究 技術 情報 人工知能 "
    "機械学習 モデル データ コンピュータ スマートフォン アプリ ユーザー システム 猫 犬 花 家 駅 友達 家族 元気 大切 "
    "新しい 大きい 楽しい 行く 来る 見る 話す 読む 書く 食べる 作る 使う 考える 分かる する ある なる"
).split()
PARTICLES = "は が を に で と の も へ から まで".split()
ENDINGS = ["です。", "ます。", "でした。", "ですか？", "だ。", "ね。", "よ！", "、"]
ASCII = "the model is a large language model for Japanese text and it runs on iPhone and Mac".split()
LINE_SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<mask>": 4, "<cls>": 5, "<sep>": 6}


def japanese_lines(n: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(WORDS) + rng.choice(PARTICLES) for _ in range(rng.randint(2, 6))]
        line = "".join(words) + rng.choice(WORDS) + rng.choice(ENDINGS)
        roll = rng.random()
        if roll < 0.2:
            line += " " + " ".join(rng.choice(ASCII) for _ in range(rng.randint(1, 5)))
        elif roll < 0.3:
            line += str(rng.randint(0, 100000))
        elif roll < 0.35:
            line = "ＡＢＣ１２３ｶﾀｶﾅ" + line
        lines.append(line)
    return lines


def train(directory: Path, *, vocab_size: int = 800, **options: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(japanese_lines()),
        model_prefix=str(directory / "spiece"),
        model_type="unigram",
        vocab_size=vocab_size,
        num_threads=1,
        minloglevel=2,
        **options,
    )
    (directory / "spiece.vocab").unlink()
    return directory / "spiece.model"


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def make_line_like(directory: Path) -> Path:
    """LINE's layout: byte fallback, ids 0-6 special, T5Tokenizer config, pad = </s> in the special tokens map."""
    train(
        directory,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        control_symbols=["<mask>", "<cls>", "<sep>"],
        user_defined_symbols=["\n"],
        normalization_rule_name="nmt_nfkc",
    )
    tokens = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "<sep>",
              "cls_token": "<cls>", "mask_token": "<mask>"}
    write_json(directory / "tokenizer_config.json", {**tokens, "pad_token": "<pad>", "extra_ids": 0,
                                                     "additional_special_tokens": [], "tokenizer_class": "T5Tokenizer"})
    write_json(directory / "special_tokens_map.json", {**tokens, "pad_token": "</s>"})
    write_json(directory / "config.json", {"model_type": "gpt_neox", "bos_token_id": 2, "eos_token_id": 2})
    return directory


def make_no_byte_fallback(directory: Path) -> Path:
    """No byte fallback, identity normalizer: unknown characters become <unk>, newlines are kept as text."""
    train(directory, vocab_size=600, byte_fallback=False, normalization_rule_name="identity")
    write_json(directory / "tokenizer_config.json",
               {"tokenizer_class": "T5Tokenizer", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "extra_ids": 0})
    return directory


@pytest.fixture(scope="module")
def line_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_line_like(tmp_path_factory.mktemp("line_like"))


@pytest.fixture(scope="module")
def line_like_built(line_like: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("line_like_out") / "tokenizer"
    report = tk.build_tokenizer(line_like, out, sweep=False)
    return out, report


@pytest.fixture(scope="module")
def no_byte_fallback(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_no_byte_fallback(tmp_path_factory.mktemp("no_byte_fallback"))


@pytest.fixture(scope="module")
def cases() -> list[tk.Case]:
    return tk.load_cases(tk.default_cases_path())


# ---------------------------------------------------------------------------------------------------
# Reading the model


def test_proto_reader_agrees_with_sentencepiece(line_like: Path, no_byte_fallback: Path) -> None:
    for directory, byte_fallback in ((line_like, True), (no_byte_fallback, False)):
        model = tk.read_sentencepiece(directory / "spiece.model")
        sp = spm.SentencePieceProcessor(model_file=str(directory / "spiece.model"))
        assert len(model.pieces) == sp.get_piece_size()
        assert model.byte_fallback is byte_fallback
        assert model.unk_id == sp.unk_id()
        for i, piece in enumerate(model.pieces):
            assert piece.piece == sp.id_to_piece(i)
            assert piece.score == pytest.approx(sp.get_score(i), abs=0)
            assert (piece.type == tk.CONTROL) == sp.is_control(i)
            assert (piece.type == tk.BYTE) == sp.is_byte(i)
            assert (piece.type == tk.UNKNOWN) == sp.is_unknown(i)
    line = tk.read_sentencepiece(line_like / "spiece.model")
    assert [line.pieces[i].piece for i in range(7)] == list(LINE_SPECIALS)
    assert line.normalizer_name == "nmt_nfkc"
    assert [p.piece for p in line.pieces if p.type == tk.USER_DEFINED] == ["\n"]
    assert len(line.ids_of_type(tk.BYTE)) == 256


def test_not_a_sentencepiece_model(tmp_path: Path) -> None:
    bad = tmp_path / "spiece.model"
    bad.write_bytes(b"\xff\xff\xff\xff not a proto")
    with pytest.raises(UserError, match="not a SentencePiece model file"):
        tk.read_sentencepiece(bad)
    with pytest.raises(UserError, match=r"no spiece\.model"):
        tk.build_tokenizer(tmp_path / "empty", tmp_path / "out")


def test_charsmap_decoding_matches_sentencepiece(line_like: Path) -> None:
    """Every decoded key, normalized by SentencePiece on its own, gives the decoded value."""
    model = tk.read_sentencepiece(line_like / "spiece.model")
    table = tk.charsmap_table(model.precompiled_charsmap)
    assert len(table) > 200_000  # nmt_nfkc: NFKC of every code point, compositions and their variants
    assert table["ﾊﾞ"] == "バ" and table["Ａ"] == "A" and table["\u3000"] == " " and table["\x01"] == ""
    sp = spm.SentencePieceProcessor(model_file=str(line_like / "spiece.model"))
    keys = sorted(k for k, v in table.items() if v.strip() == v and v and "\n" not in k)
    checked = keys[:: len(keys) // 3000]
    for key in checked:
        assert sp.normalize(key) == "▁" + table[key].replace(" ", "▁"), key
    assert len(checked) >= 3000


def test_python_charsmap_is_sentencepiece_longest_match(line_like: Path) -> None:
    model = tk.read_sentencepiece(line_like / "spiece.model")
    apply = tk.CharsMap(tk.charsmap_table(model.precompiled_charsmap))
    sp = spm.SentencePieceProcessor(model_file=str(line_like / "spiece.model"))
    for text in ("ｶﾞｷﾞｸﾞ", "ﾊﾟﾋﾟﾌﾟＡＢＣ１２３", "か\u3099", "e\u0301\u0323", "①㈱㌔", "\u1100\u1161\u11a8"):
        assert "▁" + apply(text) == sp.normalize(text)


# ---------------------------------------------------------------------------------------------------
# The converted tokenizer


def test_line_like_parity_is_total(line_like_built: tuple[Path, dict], cases: list[tk.Case]) -> None:
    out, report = line_like_built
    assert report["cases"] == len(cases) >= 400
    assert report["parity"] == 1.0
    assert report["mismatches"] == []
    assert report["ids_match_sentencepiece"] == report["decoded_match_sentencepiece"] == len(cases)
    assert report["ids_match_transformers_slow"] == len(cases)
    assert report["references"]["transformers_slow"].startswith("transformers ")
    # The set exercises byte fallback heavily (rare kanji, emoji, rare scripts): thousands of byte tokens.
    assert report["byte_fallback_tokens"] > 1000
    assert sorted(p.name for p in out.iterdir()) == ["parity-report.json", "tokenizer.json", "tokenizer_config.json"]
    assert json.loads((out / "parity-report.json").read_text(encoding="utf-8"))["parity"] == 1.0
    assert report["normalizer"]["character_map"] == "NFKC with rules"
    assert report["normalizer"]["kept_from_nfkc"] == {"U+FF5E": "U+0002"}  # ～ survives NFKC, as in SentencePiece


def test_specific_encodings_match_sentencepiece(line_like_built: tuple[Path, dict], line_like: Path) -> None:
    """The cases the naive conversions get wrong, one by one, against sentencepiece's ids."""
    out, _ = line_like_built
    fast = Tokenizer.from_file(str(out / "tokenizer.json"))
    sp = spm.SentencePieceProcessor(model_file=str(line_like / "spiece.model"))
    byte_0x41 = sp.piece_to_id("<0x41>")
    for text in ("𠮷野家😀", "ﾊﾟﾋﾟﾌﾟ", "か\u3099き\u3099", "～と〜", "  先頭  と末尾  ", "改行\nと\tタブ", "<0x41>", "▁a", "¨゙"):
        ids = fast.encode(text, add_special_tokens=False).ids
        assert ids == sp.encode(text), text
        assert fast.decode(ids, skip_special_tokens=True) == sp.decode(ids), text
    assert byte_0x41 not in fast.encode("<0x41>", add_special_tokens=False).ids
    # Declared special tokens are split from the text, as the slow tokenizer does; the rest is SentencePiece.
    ids = fast.encode("前 </s> 後<mask>", add_special_tokens=False).ids
    assert ids == [*sp.encode("前 "), 2, *sp.encode(" 後"), 4]
    # pad is "</s>" in special_tokens_map.json, so "<pad>" typed in text is just text, as in SentencePiece.
    assert fast.encode("<pad>", add_special_tokens=False).ids == sp.encode("<pad>")


def test_mlc_tokenizer_fields(line_like_built: tuple[Path, dict]) -> None:
    out, report = line_like_built
    fields = tk.mlc_tokenizer_fields(out)
    assert fields == {
        "tokenizer_files": ["tokenizer.json", "tokenizer_config.json"],
        "tokenizer_info": {"token_postproc_method": "byte_fallback", "prepend_space_in_encode": True,
                           "strip_space_in_decode": False},
    }
    assert report["mlc"] == fields


def test_detect_tokenizer_info_variants(tmp_path: Path) -> None:
    assert tk.detect_tokenizer_info(tmp_path / "missing.json") == {
        "token_postproc_method": "byte_fallback", "prepend_space_in_encode": False, "strip_space_in_decode": False}
    llama2 = {"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                                    {"type": "Replace"}]},
              "decoder": {"type": "Sequence", "decoders": [{"type": "Replace"}, {"type": "ByteFallback"},
                                                           {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}}
    gpt2 = {"normalizer": None, "decoder": {"type": "ByteLevel"}}
    (tmp_path / "a.json").write_text(json.dumps(llama2))
    (tmp_path / "b.json").write_text(json.dumps(gpt2))
    assert tk.detect_tokenizer_info(tmp_path / "a.json") == {
        "token_postproc_method": "byte_fallback", "prepend_space_in_encode": True, "strip_space_in_decode": True}
    assert tk.detect_tokenizer_info(tmp_path / "b.json") == {
        "token_postproc_method": "byte_level", "prepend_space_in_encode": False, "strip_space_in_decode": False}


def test_transformers_loads_the_output(line_like_built: tuple[Path, dict], cases: list[tk.Case]) -> None:
    from transformers import AutoTokenizer

    out, _ = line_like_built
    hf = AutoTokenizer.from_pretrained(str(out))
    fast = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert (hf.eos_token_id, hf.bos_token_id, hf.unk_token_id, hf.pad_token_id) == (2, 1, 0, 2)
    for case in cases[::7]:
        assert hf(case.text, add_special_tokens=False).input_ids == fast.encode(case.text, add_special_tokens=False).ids


def test_outputs_are_byte_identical(line_like: Path, line_like_built: tuple[Path, dict], tmp_path: Path) -> None:
    first, _ = line_like_built
    tk.build_tokenizer(line_like, tmp_path / "again", sweep=False)
    for name in ("tokenizer.json", "tokenizer_config.json", "parity-report.json"):
        assert (tmp_path / "again" / name).read_bytes() == (first / name).read_bytes(), name


def test_no_byte_fallback_model(no_byte_fallback: Path, tmp_path: Path) -> None:
    report = tk.build_tokenizer(no_byte_fallback, tmp_path / "out", sweep=False)
    assert report["parity"] == 1.0
    assert report["ids_match_transformers_slow"] == report["cases"]
    assert report["byte_fallback_tokens"] == 0
    assert report["unk_tokens"] > 500  # kanji, emoji, full-width forms the small vocabulary lacks
    assert report["normalizer"]["character_map"] == "none (SentencePiece's map is empty: identity)"
    data = json.loads((tmp_path / "out" / "tokenizer.json").read_text(encoding="utf-8"))
    assert all(d["type"] != "ByteFallback" for d in data["decoder"]["decoders"])
    fast = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    sp = spm.SentencePieceProcessor(model_file=str(no_byte_fallback / "spiece.model"))
    ids = fast.encode("𠮷野家で\n寿司", add_special_tokens=False).ids
    assert ids == sp.encode("𠮷野家で\n寿司") and 0 in ids
    assert fast.decode(ids, skip_special_tokens=True) == sp.decode(ids)  # <unk> shows as " ⁇ ", as SentencePiece


@pytest.mark.parametrize(
    "options",
    [
        {"remove_extra_whitespaces": False, "add_dummy_prefix": False},
        {"remove_extra_whitespaces": False, "add_dummy_prefix": True},
    ],
    ids=["raw", "raw-with-prefix"],
)
def test_other_whitespace_options(options: dict, tmp_path: Path) -> None:
    directory = tmp_path / "model"
    train(directory, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=3, normalization_rule_name="identity", **options)
    write_json(directory / "special_tokens_map.json", {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})
    report = tk.build_tokenizer(directory, tmp_path / "out", sweep=False)
    assert report["parity"] == 1.0, report["mismatches"][:3]
    assert report["tokenizer"]["remove_extra_whitespaces"] is False


# ---------------------------------------------------------------------------------------------------
# The check fails where it must


def test_transformers_t5_conversion_fails_the_check(line_like: Path, cases: list[tk.Case], tmp_path: Path) -> None:
    """What the write-up shipped: transformers' own T5 fast tokenizer over the same vocabulary (no byte
    fallback, grapheme-wise Precompiled normalizer, unk id 2).  The check must catch it, naming cases."""
    from transformers import T5Tokenizer

    model = tk.read_sentencepiece(line_like / "spiece.model")
    naive = T5Tokenizer(
        vocab=[(p.piece, p.score) for p in model.pieces],
        _spm_precompiled_charsmap=model.precompiled_charsmap,
        unk_token="<unk>", eos_token="</s>", pad_token="<pad>", extra_ids=0,
    )
    naive.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    declared = tk.declared_special_tokens(line_like)
    report = tk.check_parity(tmp_path / "tokenizer.json", line_like / "spiece.model", cases, declared.values())
    assert report["parity"] < 0.8
    failing = {m["case"].split(" ")[1] for m in report["mismatches"]}
    assert {"[rare]", "[emoji]", "[halfwidth]", "[kanji]", "[whitespace]"} <= failing
    by_text = {m["text"]: m for m in report["mismatches"]}
    assert "𠮷野家の牛丼" in by_text  # byte fallback missing: 𠮷 becomes an unknown token
    assert "ﾊﾟﾋﾟﾌﾟﾍﾟﾎﾟ" in by_text  # grapheme-wise normalization splits the handakuten


def test_a_broken_tokenizer_json_is_caught(line_like_built: tuple[Path, dict], line_like: Path,
                                           cases: list[tk.Case], tmp_path: Path) -> None:
    out, _ = line_like_built
    data = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["byte_fallback"] = False  # one flag
    broken = tmp_path / "tokenizer.json"
    broken.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    declared = tk.declared_special_tokens(line_like)
    report = tk.check_parity(broken, line_like / "spiece.model", cases, declared.values())
    # Exactly the cases SentencePiece encodes with byte pieces fail, and only those.
    sp = spm.SentencePieceProcessor(model_file=str(line_like / "spiece.model"))
    reference = tk.SentencePieceReference(line_like / "spiece.model", declared.values())
    with_bytes = {c.name for c in cases if any(sp.is_byte(i) for i in reference.encode(c.text))}
    assert 0 < len(with_bytes) < len(cases)
    assert {m["case"] for m in report["mismatches"]} == with_bytes
    entry = next(m for m in report["mismatches"] if m["text"] == "𩸽の塩焼き")
    assert entry["case"].startswith("tokenizer_cases_ja.txt:") and "[kanji]" in entry["case"]
    assert entry["tokenizer_json_ids"] != entry["sentencepiece_ids"]


def test_stage_fails_and_keeps_the_report(no_byte_fallback: Path, tmp_path: Path) -> None:
    """An undeclared control piece typed in the text, next to an unknown character, is the one thing the
    conversion cannot express for a model without byte fallback: the stage must fail, name the case, and
    leave the report beside the (would-be) output directory."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "spiece.model").write_bytes((no_byte_fallback / "spiece.model").read_bytes())  # no special tokens declared
    cases_file = tmp_path / "cases.txt"
    cases_file.write_text('# section: fine\n"今日は天気です。"\n# section: trap\n"x</s>y"\n', encoding="utf-8")
    out = tmp_path / ".tokenizer.tmp-abc123"
    with pytest.raises(UserError, match=r"differs from SentencePiece on 1 of 2 cases \(cases\.txt:4 \[trap\]\)"):
        tk.build_tokenizer(model_dir, out, cases=cases_file, sweep=False)
    beside = json.loads((tmp_path / "tokenizer.parity-report.json").read_text(encoding="utf-8"))
    assert beside["parity"] == 0.5 and beside["mismatches"][0]["text"] == "x</s>y"
    # With the special tokens declared (as any real model does), the same text is fine.
    write_json(model_dir / "tokenizer_config.json", {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"})
    assert tk.build_tokenizer(model_dir, out, cases=cases_file, sweep=False)["parity"] == 1.0
    assert not (tmp_path / "tokenizer.parity-report.json").exists()


def test_undeclared_special_token_not_in_vocab(line_like: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "spiece.model").write_bytes((line_like / "spiece.model").read_bytes())
    write_json(model_dir / "special_tokens_map.json", {"pad_token": "[PAD]"})
    with pytest.raises(UserError, match=r"declared special token '\[PAD\]' is not a piece"):
        tk.build_tokenizer(model_dir, tmp_path / "out", sweep=False)


# ---------------------------------------------------------------------------------------------------
# The case file


def test_case_file_covers_what_it_must(cases: list[tk.Case]) -> None:
    sections = {c.name.split(" ")[1].strip("[]") for c in cases}
    assert {"hiragana", "katakana", "kanji", "fullwidth", "halfwidth", "ascii", "numbers", "emoji", "rare",
            "whitespace", "control", "special_tokens", "conversation", "combining"} <= sections
    texts = [c.text for c in cases]
    assert "" in texts and " " in texts and "\t" in texts and "\n" in texts
    assert any(t.startswith("  ") and t.strip() for t in texts) and any(t.endswith("  ") and t.strip() for t in texts)
    assert any("\n" in t.strip() for t in texts) and any("   " in t.strip() for t in texts)
    assert {"</s>", "<s>", "<unk>", "<pad>", "<mask>", "<cls>", "<sep>"} <= set(texts)
    assert any(ord(ch) > 0xFFFF for t in texts for ch in t)  # outside the BMP (byte fallback)
    assert len(texts) == len(set(texts))


def test_case_file_format_errors(tmp_path: Path) -> None:
    bad = tmp_path / "cases.txt"
    bad.write_text('"fine"\nnot json\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"cases\.txt:2: a case must be one JSON string per line"):
        tk.load_cases(bad)
    bad.write_text('"fine"\n42\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"cases\.txt:2: a case must be a JSON string, got int"):
        tk.load_cases(bad)
    bad.write_text("# only comments\n\n", encoding="utf-8")
    with pytest.raises(UserError, match="no test cases"):
        tk.load_cases(bad)
    line_separator = tmp_path / "ls.txt"
    line_separator.write_text('"a\u2028b"\n', encoding="utf-8")  # a literal U+2028 stays inside its case
    assert [c.text for c in tk.load_cases(line_separator)] == ["a\u2028b"]


# ---------------------------------------------------------------------------------------------------
# Slow: the full normalizer sweep, and the demo model


@pytest.mark.slow
def test_normalizer_sweep_finds_no_difference(line_like: Path, tmp_path: Path) -> None:
    """Every assigned code point and every one of nmt_nfkc's 220k multi-character keys normalize the same."""
    report = tk.build_tokenizer(line_like, tmp_path / "out", sweep=True)
    sweep = report["normalizer"]["sweep"]
    assert sweep["code_points"]["checked"] > 140_000 and sweep["code_points"]["differ"] == 0
    assert sweep["multi_char_keys"]["checked"] > 200_000 and sweep["multi_char_keys"]["differ"] == 0


@pytest.mark.slow
def test_demo_model(demo_model: Path, tmp_path: Path) -> None:
    report = tk.build_tokenizer(demo_model, tmp_path / "tokenizer")
    assert report["parity"] == 1.0
    assert report["tokenizer"]["special_tokens"]["eos_token"] == {"content": "</s>", "id": 2, "kind": "control"}
    assert report["normalizer"]["sweep"]["code_points"]["differ"] == 0
