"""Model families: load, render as MLC does, and validate against the model's own tokenizer.

The tokenizers are small SentencePiece models trained here (a second each): one laid out like LINE's
(byte fallback, <unk> 0 … <sep> 6, eos 2, newline kept), one like rinna's (no byte fallback, eos 3,
newlines impossible), one whose normalizer turns newlines into spaces.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import sentencepiece as spm
import yaml

from hf2mlc import families as fam
from hf2mlc.errors import UserError
from hf2mlc.schemas import load_schema
from shared_data import shared_file
from tiny_tokenizers import byte_level_bpe

FAMILIES = Path(__file__).resolve().parents[1] / "config" / "families"
CARD_PROMPT = "ユーザー: 四国の県名を全て列挙してください。\nシステム: "
WORDS = (
    "ユーザー システム 四国 県名 全て 列挙 してください 日本 おすすめ 観光地 教えてください 今日 天気 東京 "
    "大阪 会社 電車 料理 寿司 質問 答え 説明 研究 技術 情報 モデル データ 猫 犬 花 家 駅 友達 元気 行く 見る"
).split()


def lines(n: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) + rng.choice("はがをにでとのも") for _ in range(rng.randint(2, 6))]
        out.append(": ".join(words[:2]) + "".join(words[2:]) + rng.choice(["。", "です。", "？", "、"]))
    return out


def make_model(directory: Path, *, eos: int, special_map: dict, **options: object) -> Path:
    directory.mkdir(parents=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines()), model_prefix=str(directory / "spiece"), model_type="unigram",
        vocab_size=500, num_threads=1, minloglevel=2, **options,
    )
    (directory / "spiece.vocab").unlink()
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map), encoding="utf-8")
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "eos_token_id": eos}), encoding="utf-8")
    return directory


LINE_MAP = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>",
            "mask_token": "<mask>", "cls_token": "<cls>", "sep_token": "<sep>"}
LINE_IDS = dict(byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=3, control_symbols=["<mask>", "<cls>", "<sep>"])


@pytest.fixture(scope="module")
def line_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("m") / "line", eos=2, special_map=LINE_MAP,
                      user_defined_symbols=["\n"], **LINE_IDS)


@pytest.fixture(scope="module")
def newline_less(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LINE's ids, but nmt_nfkc turns "\\n" into a space: a newline separator cannot survive it."""
    return make_model(tmp_path_factory.mktemp("m") / "nonl", eos=2, special_map=LINE_MAP, **LINE_IDS)


@pytest.fixture(scope="module")
def rinna_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(
        tmp_path_factory.mktemp("m") / "rinna", eos=3,
        special_map={"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "[PAD]"},
        byte_fallback=False, pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="[PAD]", user_defined_symbols=["<NL>"],
    )


def family_variant(tmp_path: Path, base: str = "line", **changes: object) -> Path:
    """A copy of a shipped family with some keys changed ("template.seps" style dotted keys)."""
    data = yaml.safe_load((FAMILIES / f"{base}.yaml").read_text(encoding="utf-8"))
    for dotted, value in changes.items():
        target = data
        *parents, last = dotted.split(".")
        for key in parents:
            target = target[key]
        if value is None and last in target and dotted != "template.system_prefix_token_ids":
            del target[last]
        else:
            target[last] = value
    path = tmp_path / f"{base}-variant.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------
# Loading and the MLC object


def test_line_family_values() -> None:
    family = fam.load_family(FAMILIES / "line.yaml")
    assert family.generation == {"repetition_penalty": 1.1, "temperature": 0.7, "top_p": 0.9}
    assert family.overrides == {}
    assert family.on_mismatch == "error" and family.warning is None
    assert fam.conv_template(family) == {
        "name": "line",
        "system_template": "{system_message}",
        "system_message": "",
        "system_prefix_token_ids": None,
        "add_role_after_system_message": True,
        "roles": {"user": "ユーザー", "assistant": "システム"},
        "role_templates": {"user": "{user_message}", "assistant": "{assistant_message}", "tool": "{tool_message}"},
        "messages": [],
        "seps": ["\n"],
        "role_content_sep": ": ",
        "role_empty_sep": ": ",
        "stop_str": [],
        "stop_token_ids": [2],
        "strip_reasoning_in_history": False,
        "function_string": "",
        "use_function_calling": False,
    }


def test_seed_compat_reproduces_the_write_up_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hf2mlc.families"):
        family = fam.load_family(FAMILIES / "seed-compat.yaml")
    template = fam.conv_template(family)
    assert template["name"] == "line_llm"
    assert template["roles"] == {"user": "ユーザー", "assistant": "システム"}
    assert template["seps"] == ["<NL>"] and template["role_content_sep"] == ": "
    assert template["stop_str"] == ["</s>"] and template["stop_token_ids"] == [3, 0]
    assert template["system_prefix_token_ids"] is None
    assert family.overrides == {"ffn_out_dtype": "float16"}
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "<NL>" in warning and "rinna" in warning and "id 2" in warning and "newline" in warning


def test_render_prompt_like_mlc() -> None:
    line = fam.conv_template(fam.load_family(FAMILIES / "line.yaml"))
    assert fam.render_prompt(line, [("user", "四国の県名を全て列挙してください。")]) == CARD_PROMPT
    history = [("user", "こんにちは"), ("assistant", "こんにちは！"), ("user", "元気？")]
    assert fam.render_prompt(line, history) == "ユーザー: こんにちは\nシステム: こんにちは！\nユーザー: 元気？\nシステム: "
    # Two separators, a system text, a role template, and no role name before the first message (Llama-2 style).
    inst = {
        "name": "inst", "system_template": "[INST] <<SYS>>\n{system_message}\n<</SYS>>\n\n", "system_message": "be brief",
        "roles": {"user": "[INST]", "assistant": "[/INST]"}, "role_templates": {"user": "{user_message}"},
        "seps": [" ", "</s>"], "role_content_sep": " ", "role_empty_sep": " ", "add_role_after_system_message": False,
    }
    assert fam.render_prompt(inst, [("user", "hi"), ("assistant", "hello"), ("user", "bye")]) == (
        "[INST] <<SYS>>\nbe brief\n<</SYS>>\n\nhi [/INST] hello</s>[INST] bye [/INST] "
    )
    # A system message in the conversation replaces the template's; role_templates wrap the content.
    wrapped = {**line, "system_template": "S:{system_message}|", "role_templates": {"user": "「{user_message}」"}}
    assert fam.render_prompt(wrapped, [("system", "丁寧に"), ("user", "質問")]) == "S:丁寧に|ユーザー: 「質問」\nシステム: "
    with pytest.raises(UserError, match="role 'tool' is not one of"):
        fam.render_prompt(line, [("tool", "x")])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"template.stop_token_ids": None}, r"template: 'stop_token_ids' is a required property"),
        ({"template.stop_token_ids": ["2"]}, r"template\.stop_token_ids\[0\]: '2' is not of type 'integer'"),
        ({"template.seps": ["a", "b", "c"]}, r"template\.seps: .* is too long"),
        ({"template.stop_words": ["x"]}, r"template: Additional properties are not allowed \('stop_words'"),
        ({"overrides.ffn_out_dtype": "bfloat16"}, r"overrides\.ffn_out_dtype: 'bfloat16' is not one of"),
        ({"generation.top_p": 1.5}, r"generation\.top_p: 1\.5 is greater than the maximum of 1"),
        ({"prompt_example.messages": [["robot", "x"]]}, r"prompt_example\.messages\[0\]\[0\]: 'robot' is not one of"),
        ({"template.system_prefix_token_ids": [1]}, r"expect\.system_prefix_tokens has 0 entries but template\.system_prefix_token_ids has 1"),
        ({"template.role_templates": {"user": "no placeholder"}}, r"template\.role_templates\.user must contain \{user_message\}"),
    ],
)
def test_bad_family_files(tmp_path: Path, changes: dict, message: str) -> None:
    path = family_variant(tmp_path, **changes)
    with pytest.raises(UserError, match=message) as info:
        fam.load_family(path)
    assert str(info.value).startswith(str(path))


def test_unreadable_family_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read the family file"):
        fam.load_family(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(UserError, match="bad.yaml: not valid YAML"):
        fam.load_family(bad)


# ---------------------------------------------------------------------------------------------------
# Validation against the tokenizer


def test_line_validates_on_a_line_like_tokenizer(line_like: Path) -> None:
    report = fam.validate_family(fam.load_family(FAMILIES / "line.yaml"), line_like)
    assert report["valid"] and report["warnings"] == [] and report["mismatches"] == []
    assert report["stop_token_ids"] == [{"id": 2, "piece": "</s>", "ok": True}]
    sp = spm.SentencePieceProcessor(model_file=str(line_like / "spiece.model"))
    example = report["prompt_example"]
    assert example["matches_card"] and example["rendered"] == CARD_PROMPT
    assert example["token_ids"] == example["card_token_ids"] == sp.encode(CARD_PROMPT)
    assert sp.piece_to_id("\n") in example["token_ids"]  # the newline is a token, not a space
    assert report["strings"]["seps[0]"]["decodes_to"] == "\n"
    assert any("ends in a space" in note for note in report["notes"])  # ": " at the end: SentencePiece drops it


def test_seed_compat_on_line_like_reports_every_problem(line_like: Path, caplog: pytest.LogCaptureFixture) -> None:
    family = fam.load_family(FAMILIES / "seed-compat.yaml")
    with caplog.at_level(logging.WARNING, logger="hf2mlc.families"):
        report = fam.validate_family(family, line_like)
    assert not report["valid"]
    path = FAMILIES / "seed-compat.yaml"
    assert report["mismatches"][:3] == [
        f"{path}: stop_token_ids[0]=3 decodes to '<pad>', not '</s>'.",
        f"{path}: stop_token_ids[1]=0 decodes to '<unk>', not '</s>'.",
        f"{path}: stop_token_ids [3, 0] do not include the model's eos_token_id 2 ('</s>', config.json); add it.",
    ]
    assert any(m.startswith(f"{path}: prompt_example: the template renders") for m in report["mismatches"])
    nl = [w for w in report["warnings"] if "seps[0]='<NL>' is not a token" in w]
    assert len(nl) == 1 and len(report["strings"]["seps[0]"]["ids"]) > 2  # <NL> is read as characters
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert set(report["warnings"]) <= set(logged)


def test_rinna_family(rinna_like: Path, line_like: Path) -> None:
    family = fam.load_family(FAMILIES / "rinna.yaml")
    report = fam.validate_family(family, rinna_like)
    assert report["valid"] and report["stop_token_ids"] == [{"id": 3, "piece": "</s>", "ok": True}]
    assert report["strings"]["seps[0]"]["pieces"] == ["▁", "<NL>"]  # <NL> is one piece (after the dummy prefix)
    assert report["warnings"] == []
    assert report["prompt_example"]["rendered"] == "ユーザー: 日本のおすすめの観光地を教えてください。<NL>システム: "
    # On LINE's layout, id 3 is <pad>: rinna's template is wrong there, and says so.
    with pytest.raises(UserError, match=r"rinna\.yaml: stop_token_ids\[0\]=3 decodes to '<pad>', not '</s>'\. \(and 1 more problem\)"):
        fam.validate_family(family, line_like)


def test_stop_id_decoding_to_another_piece(line_like: Path, tmp_path: Path) -> None:
    path = family_variant(tmp_path, **{"template.stop_token_ids": [2, 0]})
    with pytest.raises(UserError) as info:
        fam.validate_family(fam.load_family(path), line_like)
    assert str(info.value) == f"{path}: stop_token_ids[1]=0 decodes to '<unk>', not '</s>'."


def test_stop_id_outside_the_vocabulary(line_like: Path, tmp_path: Path) -> None:
    path = family_variant(tmp_path, **{"template.stop_token_ids": [2, 51200]})
    with pytest.raises(UserError, match=r"stop_token_ids\[1\]=51200 is outside the vocabulary \(500 pieces in spiece\.model\)"):
        fam.validate_family(fam.load_family(path), line_like)


def test_eos_must_be_a_stop_id(line_like: Path, tmp_path: Path) -> None:
    path = family_variant(tmp_path, **{"template.stop_token_ids": [3], "expect.stop_tokens": ["<pad>"]})
    with pytest.raises(UserError, match=r"stop_token_ids \[3\] do not include the model's eos_token_id 2 \('</s>', config\.json\)"):
        fam.validate_family(fam.load_family(path), line_like)


def test_separator_that_does_not_survive_the_tokenizer(newline_less: Path, rinna_like: Path, tmp_path: Path) -> None:
    family = fam.load_family(FAMILIES / "line.yaml")
    with pytest.raises(UserError, match=r"line\.yaml: seps\[0\]='\\n' does not survive the model's tokenizer: it decodes to ''"):
        fam.validate_family(family, newline_less)
    # Without byte fallback an unknown character comes back as SentencePiece's " ⁇ ".
    rinna_ids = {"template.stop_token_ids": [3], "prompt_example.prompt": CARD_PROMPT}
    path = family_variant(tmp_path, **rinna_ids, **{"template.roles": {"user": "ユーザー", "assistant": "🤖"}})
    with pytest.raises(UserError, match=r"roles\.assistant='🤖' does not survive the model's tokenizer: it decodes to ' ⁇ '"):
        fam.validate_family(fam.load_family(path), rinna_like)


def test_prompt_example_must_match_the_card(line_like: Path, tmp_path: Path) -> None:
    path = family_variant(tmp_path, **{"prompt_example.prompt": "ユーザー:四国の県名を全て列挙してください。\nシステム:"})
    with pytest.raises(UserError, match=r"prompt_example: the template renders .* but the model card's prompt is"):
        fam.validate_family(fam.load_family(path), line_like)


def test_bos_the_card_does_not_add_is_caught(line_like: Path, tmp_path: Path) -> None:
    """system_prefix_token_ids [1] is a valid BOS piece, but the card encodes without it: token ids differ."""
    path = family_variant(tmp_path, **{"template.system_prefix_token_ids": [1], "expect.system_prefix_tokens": ["<s>"]})
    family = fam.load_family(path)
    assert fam.conv_template(family)["system_prefix_token_ids"] == [1]
    with pytest.raises(UserError, match=r"prompt_example: the template's token ids \[1, .* differ from the card's encoding"):
        fam.validate_family(family, line_like)
    wrong = family_variant(tmp_path, **{"template.system_prefix_token_ids": [2], "expect.system_prefix_tokens": ["<s>"]})
    with pytest.raises(UserError, match=r"system_prefix_token_ids\[0\]=2 decodes to '</s>', not '<s>'"):
        fam.validate_family(fam.load_family(wrong), line_like)


def test_validation_needs_a_tokenizer(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    with pytest.raises(UserError, match=r"no spiece\.model, tokenizer\.model or tokenizer\.json"):
        fam.validate_family(fam.load_family(FAMILIES / "line.yaml"), tmp_path / "model")


def test_schema_allows_exactly_the_ffn_out_dtypes_of_the_spec() -> None:
    from hf2mlc.spec import FFN_OUT_DTYPES

    overrides = load_schema("family.schema.yaml")["properties"]["overrides"]["properties"]
    assert list(overrides) == ["ffn_out_dtype"] and overrides["ffn_out_dtype"]["enum"] == list(FFN_OUT_DTYPES)


def test_family_and_config_schemas_are_draft_2020_12_side_by_side() -> None:
    """One schema language for both: what Snakemake's validate() applies to the config (Draft 2020-12)."""
    for name in ("schema.yaml", "family.schema.yaml"):
        assert load_schema(name)["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert (FAMILIES.parent / name).is_file()
    assert not (FAMILIES / "schema.yaml").exists()  # every YAML file in families/ is a family


def test_shipped_families_load_and_readme_names_every_key() -> None:
    readme = (FAMILIES / "README.md").read_text(encoding="utf-8")
    for path in sorted(FAMILIES.glob("*.yaml")):
        fam.load_family(path)
    schema = load_schema("family.schema.yaml")["properties"]
    keys = set(schema) | {key for block in schema.values() for key in block.get("properties", ())}
    missing = [key for key in sorted(keys) if f"`{key}`" not in readme and f"`{key}." not in readme]
    assert missing == []


@pytest.mark.slow
def test_demo_model_families(demo_model: Path) -> None:
    model_dir = demo_model
    report = fam.validate_family(fam.load_family(FAMILIES / "line.yaml"), model_dir)
    assert report["valid"] and report["prompt_example"]["matches_card"]
    compat = fam.validate_family(fam.load_family(FAMILIES / "seed-compat.yaml"), model_dir)
    assert not compat["valid"] and len(compat["mismatches"]) >= 4


@pytest.fixture(scope="module")
def gpt_neox_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose tokenizer is a byte-level BPE tokenizer.json (Pythia's layout, <|endoftext|> id 0)."""
    english = ["The capital of Japan is Tokyo.", "What is the capital of Japan?", "<human>: hello\n<bot>: hi"] * 50
    return byte_level_bpe(tmp_path_factory.mktemp("m") / "neox", english + lines(300))


def test_plain_family_on_a_tokenizer_json_model(gpt_neox_like: Path) -> None:
    report = fam.validate_family(fam.load_family(FAMILIES / "plain.yaml"), gpt_neox_like)
    assert report["valid"] and report["prompt_example"]["matches_card"]
    assert report["tokenizer"] == {"file": "tokenizer.json", "loaded_by": "tokenizers", "pieces": 500}
    assert report["stop_token_ids"] == [{"id": 0, "piece": "<|endoftext|>", "ok": True}]
    assert fam.render_prompt(fam.conv_template(fam.load_family(FAMILIES / "plain.yaml")), [("user", "abc")]) == "abc"


def test_redpajama_chat_family(gpt_neox_like: Path, line_like: Path) -> None:
    family = fam.load_family(FAMILIES / "redpajama_chat.yaml")
    report = fam.validate_family(family, gpt_neox_like)
    assert report["valid"] and report["prompt_example"]["rendered"] == "<human>: What is the capital of Japan?\n<bot>:"
    assert report["strings"]["seps[0]"]["decodes_to"] == "\n"
    # "<human>" is text to the GPT-NeoX tokenizer (no such token): reported, not an error.
    assert any("'<human>' is not a token" in w for w in report["warnings"])
    conv = fam.conv_template(family)
    assert (conv["roles"], conv["seps"], conv["role_empty_sep"], conv["stop_str"], conv["stop_token_ids"]) == (
        {"user": "<human>", "assistant": "<bot>"}, ["\n"], ":", ["<human>"], [0])
    # On LINE's layout id 0 is <unk>: the family is wrong there, and says so.
    with pytest.raises(UserError, match=r"redpajama_chat\.yaml: stop_token_ids\[0\]=0 decodes to '<unk>'"):
        fam.validate_family(family, line_like)


def test_gpt_neox_families_on_the_real_20b_tokenizer(tmp_path: Path) -> None:
    source = shared_file("tokenizers", "20B_tokenizer.json")
    model_dir = byte_level_bpe(tmp_path / "pythia", ["x"])
    model_dir.joinpath("tokenizer.json").write_bytes(source.read_bytes())
    for name in ("plain", "redpajama_chat"):
        report = fam.validate_family(fam.load_family(FAMILIES / f"{name}.yaml"), model_dir)
        assert report["valid"] and report["prompt_example"]["matches_card"], name
        assert report["stop_token_ids"] == [{"id": 0, "piece": "<|endoftext|>", "ok": True}]
