"""The embedded demo model: files, LINE's options and ids, tokenizer behaviour, quality and determinism.

One build serves the whole module (``demo``); the determinism test makes the only second one.
References are independent of hf2mlc's demo code: transformers loads and runs the model, sentencepiece
tokenizes, ``unicodedata`` says what NFKC text is, the ``line`` family file (config/families/line.yaml)
with ``render_prompt`` says what MLC's engine sends, and the perplexity is recomputed here from the logits.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
spm = pytest.importorskip("sentencepiece")

from hf2mlc import demo  # noqa: E402
from hf2mlc import families  # noqa: E402
from hf2mlc.demo_corpus import (  # noqa: E402
    RARE_CHARACTERS,
    SYSTEM,
    USER,
    demo_corpus,
    read_dialogues,
    split_exchanges,
    write_dialogues,
)
from hf2mlc.errors import UserError  # noqa: E402
from hf2mlc.model.gpt_neox.config import GPTNeoXConfig  # noqa: E402

#: LINE japanese-large-lm-3.6b(-instruction-sft) config.json values the demo must share (line-model.md).
LINE_OPTIONS = {
    "architectures": ["GPTNeoXForCausalLM"],
    "model_type": "gpt_neox",
    "tie_word_embeddings": True,
    "rotary_pct": 1.0,
    "rotary_emb_base": 10000,
    "use_parallel_residual": False,
    "torch_dtype": "float16",
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu",
    "bos_token_id": 2,
    "eos_token_id": 2,
    "max_position_embeddings": 2048,
}
LINE_SPECIAL_IDS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<mask>": 4, "<cls>": 5, "<sep>": 6}
#: Held-out perplexity must stay below this (uniform over the vocabulary would be VOCAB_SIZE = 1024;
#: seed 0 measures 1.42 on the reference machine).
PERPLEXITY_BOUND = 4.0
LINE_FAMILY = Path(__file__).resolve().parents[1] / "config" / "families" / "line.yaml"
#: New tokens greedy decoding may take before it must have emitted </s> (the longest answer asked for
#: below, the omelette recipe, is 70 tokens).
MAX_NEW_TOKENS = 100


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run this module's torch work on one thread: OpenMP threads on shared, busy cores spin and crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_build(one_torch_thread, demo_model_build):
    """The session's demo build (tests/conftest.py), with torch's global settings before and after it."""
    b = demo_model_build
    return b["dir"], b["stats"], b["before"], b["after"]


@pytest.fixture(scope="module")
def demo_dir(demo_build) -> Path:
    return demo_build[0]


@pytest.fixture(scope="module")
def sp(demo_dir):
    return spm.SentencePieceProcessor(model_file=str(demo_dir / "spiece.model"))


@pytest.fixture(scope="module")
def hf_model(demo_dir):
    from transformers import GPTNeoXForCausalLM

    return GPTNeoXForCausalLM.from_pretrained(demo_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def line_template():
    """The ``line`` family's conversation template, as the workflow writes it into mlc-chat-config.json."""
    return families.conv_template(families.load_family(LINE_FAMILY))


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _exchanges(text: str) -> list[tuple[str, str]]:
    """(question, answer) pairs of a corpus dialogue, read with a regular expression (a second parser)."""
    pairs = re.findall(rf"^{USER}: ([^\n]*)\n{SYSTEM}: (.*?)(?=\n{USER}: |\Z)", text, flags=re.S | re.M)
    assert "".join(f"{USER}: {q}\n{SYSTEM}: {a}\n" for q, a in pairs) == text + "\n"
    return pairs


def _answer_ends(sp, template, text: str) -> list[int]:
    """Token count of the dialogue's encoding up to the end of each answer, from the engine's renderings."""
    history, ends = [], []
    for question, answer in _exchanges(text):
        history.append(("user", question))
        ends.append(len(sp.encode(families.render_prompt(template, history) + answer)))
        history.append(("assistant", answer))
    return ends


# --- files and statistics ----------------------------------------------------------------------------


def test_files_and_stats(demo_build):
    out, stats, before, after = demo_build
    assert sorted(p.name for p in out.iterdir()) == sorted(demo.MODEL_FILES)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary directory left behind"
    json.dumps(stats)  # goes into a manifest
    assert stats["vocab_size"] == 1024 and stats["steps"] == demo.TRAIN_STEPS
    assert stats["train_dialogues"] == 3000 and stats["heldout_dialogues"] == 150
    assert set(stats["timings"]) == {"corpus", "tokenizer", "train", "write"}
    # torch's thread count, deterministic flag and global RNG are the caller's again.
    assert before[:2] == after[:2] == (2, False)
    assert torch.equal(before[2], after[2])
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "hf2mlc demo" in card and "not** a useful language model" in card
    assert f"{stats['heldout_perplexity']:.3f}" in card


def test_config_matches_line(demo_dir, sp):
    config = _read_json(demo_dir / "config.json")
    for key, value in LINE_OPTIONS.items():
        assert config[key] == value, key
    assert "pad_token_id" not in config and "rope_parameters" not in config
    assert config["vocab_size"] == sp.get_piece_size() == 1024
    parsed = GPTNeoXConfig.from_file(demo_dir)
    assert parsed.hidden_size % 32 == 0 and parsed.intermediate_size % 32 == 0
    assert parsed.intermediate_size == 4 * parsed.hidden_size
    assert (parsed.hidden_size, parsed.num_attention_heads, parsed.num_hidden_layers) == (128, 4, 2)
    assert 2 <= parsed.num_hidden_layers <= 4 and parsed.head_dim == 32 and parsed.rotary_dim == 32
    assert _read_json(demo_dir / "generation_config.json") == {
        "_from_model_config": True, "bos_token_id": 2, "eos_token_id": 2,
    }


def test_transformers_reads_legacy_rotary_keys(tmp_path):
    """The demo writes LINE's ``rotary_pct``/``rotary_emb_base``; transformers 5 must still honour them.

    The demo's own values equal transformers' defaults, so other values prove they are read.
    """
    from transformers import GPTNeoXConfig as HFConfig
    from transformers import GPTNeoXForCausalLM

    raw = {**demo.model_config(), "rotary_pct": 0.25, "rotary_emb_base": 5000}
    (tmp_path / "config.json").write_text(json.dumps(raw), encoding="utf-8")
    config = HFConfig.from_pretrained(tmp_path)
    assert config.rope_parameters["partial_rotary_factor"] == 0.25
    assert config.rope_parameters["rope_theta"] == 5000
    model = GPTNeoXForCausalLM(config)
    head_dim = raw["hidden_size"] // raw["num_attention_heads"]
    assert model.gpt_neox.layers[0].attention.rotary_ndims == head_dim // 4
    expected = 1.0 / 5000 ** (torch.arange(0, head_dim // 4, 2, dtype=torch.float32) / (head_dim // 4))
    torch.testing.assert_close(model.gpt_neox.rotary_emb.inv_freq, expected)


# --- weights --------------------------------------------------------------------------------------


def test_weights_float16_tied_and_loaded_by_transformers(demo_dir, hf_model):
    from safetensors import safe_open

    with safe_open(str(demo_dir / "model.safetensors"), "pt") as f:
        names = sorted(f.keys())
        tensors = {name: f.get_tensor(name) for name in names}
    # LINE's tied checkpoint layout: no output projection stored, everything under gpt_neox.
    assert "embed_out.weight" not in names and "lm_head.weight" not in names
    assert all(name.startswith("gpt_neox.") for name in names)
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert tensors["gpt_neox.embed_in.weight"].shape == (1024, 128)
    # embed_in; final norm weight and bias; per layer 2 norms and 4 linears, each a weight and a bias.
    assert len(names) == 1 + 2 + 2 * 12
    assert "gpt_neox.layers.1.attention.query_key_value.weight" in names
    assert "gpt_neox.layers.1.mlp.dense_4h_to_h.bias" in names
    # transformers loads every stored tensor unchanged and ties the output projection to the embedding.
    state = hf_model.state_dict()
    for name, tensor in tensors.items():
        assert torch.equal(state[name], tensor.float()), name
    assert hf_model.get_output_embeddings().weight.data_ptr() == hf_model.get_input_embeddings().weight.data_ptr()
    assert hf_model.config.rope_parameters["partial_rotary_factor"] == 1.0
    assert hf_model.config.use_parallel_residual is False


# --- tokenizer ------------------------------------------------------------------------------------


def test_special_ids(demo_dir, sp):
    for piece, index in LINE_SPECIAL_IDS.items():
        assert sp.id_to_piece(index) == piece
        assert sp.piece_to_id(piece) == index
    assert sp.unk_id() == 0 and sp.bos_id() == 1 and sp.eos_id() == 2 and sp.pad_id() == 3
    assert sp.is_unknown(0) and all(sp.is_control(i) for i in range(1, 7))
    assert sp.id_to_piece(7) == "\n" and not sp.is_control(7)
    assert [sp.id_to_piece(i) for i in (8, 263)] == ["<0x00>", "<0xFF>"]
    assert all(sp.is_byte(i) for i in range(8, 264))
    tokenizer_config = _read_json(demo_dir / "tokenizer_config.json")
    assert tokenizer_config["tokenizer_class"] == "T5Tokenizer" and tokenizer_config["extra_ids"] == 0
    special = _read_json(demo_dir / "special_tokens_map.json")
    assert special["pad_token"] == "</s>" and special["eos_token"] == "</s>" and special["unk_token"] == "<unk>"
    for key in ("bos_token", "eos_token", "unk_token", "mask_token", "cls_token", "sep_token"):
        assert sp.piece_to_id(special[key]) == LINE_SPECIAL_IDS[special[key]]


@pytest.mark.parametrize("character", ["𩸽", "😊", "🍣", "龘"])
def test_byte_fallback_on_rare_character(sp, character):
    text = f"{SYSTEM}: {character}です"
    pieces = sp.encode(text, out_type=str)
    assert sp.piece_to_id(character) == sp.unk_id()  # not a piece of its own
    assert sp.unk_id() not in sp.encode(text)
    start = pieces.index(f"<0x{character.encode('utf-8')[0]:02X}>")
    expected = [f"<0x{byte:02X}>" for byte in character.encode("utf-8")]
    assert pieces[start : start + len(expected)] == expected
    assert sp.decode(sp.encode(text)) == text


def test_rare_corpus_characters_left_to_byte_fallback(demo_build, sp):
    train, _ = demo_corpus(0)
    present = [ch for ch in RARE_CHARACTERS if any(ch in text for text in train)]
    assert len(present) == len(RARE_CHARACTERS)  # the corpus does contain them …
    assert all(sp.piece_to_id(ch) == sp.unk_id() for ch in present)  # … too rarely to earn a piece
    assert demo_build[1]["byte_fallback_characters"] == list(RARE_CHARACTERS)


def test_heldout_roundtrip_newlines_and_nfkc(demo_dir, sp):
    heldout = read_dialogues(demo_dir / "heldout.txt")
    assert len(heldout) == 150
    for text in heldout:
        ids = sp.encode(text)
        assert sp.unk_id() not in ids
        assert ids.count(7) == text.count("\n")  # every newline is the newline piece
        assert sp.decode(ids) == unicodedata.normalize("NFKC", text)
    # Full-width input is normalized as LINE's nmt_nfkc does.
    assert sp.encode("ＡＢＣ１２３", out_type=str) == sp.encode("ABC123", out_type=str)


# --- quality --------------------------------------------------------------------------------------


def test_heldout_perplexity_far_below_uniform(demo_build, sp, hf_model, line_template):
    """Each dialogue encoded whole, nothing in front; targets the next token, but </s> after every answer."""
    out, stats, _, _ = demo_build
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in read_dialogues(out / "heldout.txt"):
            inputs = sp.encode(text)
            targets = inputs[1:] + [2]
            for end in _answer_ends(sp, line_template, text):
                targets[end - 1] = 2
            logprobs = torch.log_softmax(hf_model(torch.tensor([inputs])).logits[0].double(), dim=-1)
            nll -= logprobs[torch.arange(len(inputs)), torch.tensor(targets)].sum().item()
            count += len(targets)
    perplexity = math.exp(nll / count)
    assert perplexity < PERPLEXITY_BOUND, perplexity
    assert perplexity < sp.get_piece_size() / 100
    assert count == stats["heldout_tokens"]
    assert perplexity == pytest.approx(stats["heldout_perplexity"], rel=1e-3)
    assert stats["initial_heldout_perplexity"] > 500  # untrained: about uniform


# --- chat as MLC's engine drives it -----------------------------------------------------------------


def test_chat_template_matches_line_family(line_template):
    """The demo's copy of the template renders every held-out conversation as the line family does, and a
    corpus dialogue is exactly the engine's prompt for its last turn followed by the last answer."""
    _, heldout = demo_corpus(0)
    assert families.render_prompt(line_template, [("user", "四国の県名を全て列挙してください。")]) == (
        f"{USER}: 四国の県名を全て列挙してください。\n{SYSTEM}: "
    )
    for text in heldout:
        pairs = _exchanges(text)
        assert split_exchanges(text) == pairs
        history = [(role, content) for q, a in pairs for role, content in (("user", q), ("assistant", a))]
        for turn in range(1, len(history) + 1, 2):
            assert families.render_prompt(demo.CHAT_TEMPLATE, history[:turn]) == families.render_prompt(
                line_template, history[:turn]
            )
        assert families.render_prompt(line_template, history[:-1]) + pairs[-1][1] == text


def test_chat_example_rows(sp, line_template):
    """A training row starts at the dialogue's first token, its inputs are what the engine sends (never
    </s>), and its targets put </s> after every answer."""
    _, heldout = demo_corpus(0)
    three = [text for text in heldout if len(_exchanges(text)) == 3]
    assert len(three) > 10
    for text in [heldout[0], *three[:5]]:
        inputs, targets = demo.chat_example(sp.encode, text)
        assert inputs == sp.encode(text) and len(targets) == len(inputs)
        assert inputs[0] not in range(7) and 2 not in inputs
        ends = _answer_ends(sp, line_template, text)
        assert ends[-1] == len(inputs)
        assert [t for t, target in enumerate(targets) if target == 2] == [end - 1 for end in ends]
        for t, target in enumerate(targets[:-1]):
            assert target == (2 if t + 1 in ends else inputs[t + 1])
        # Each turn's prompt, as the engine encodes it, is exactly the row's inputs up to that answer,
        # and the history continues after an answer with the newline piece, not with </s>.
        history: list[tuple[str, str]] = []
        for question, answer in _exchanges(text):
            history.append(("user", question))
            prompt = sp.encode(families.render_prompt(line_template, history))
            assert inputs[: len(prompt)] == prompt
            history.append(("assistant", answer))
        assert all(inputs[end] == 7 for end in ends[:-1])
    with pytest.raises(ValueError):
        demo.chat_example(sp.encode, f"{SYSTEM}: こんにちは")


def test_heldout_answers_end_with_stop_token(demo_dir, sp, hf_model, line_template):
    """After every held-out answer, first or later turn, the model's choice is </s>; inside answers it
    (almost) never is.  Teacher-forced: one forward pass over a dialogue gives each turn's prediction
    after its prompt and its answer, exactly as the engine would compute it.  (Before rows were trained
    this way, only the last answer of a dialogue was followed by </s>: seed 0 stopped after 207 of 301.)"""
    answers = stopped = inside = premature = 0
    with torch.no_grad():
        for text in read_dialogues(demo_dir / "heldout.txt"):
            inputs = sp.encode(text)
            choice = hf_model(torch.tensor([inputs])).logits[0].argmax(-1).tolist()
            history: list[tuple[str, str]] = []
            for (question, answer), end in zip(_exchanges(text), _answer_ends(sp, line_template, text)):
                history.append(("user", question))
                start = len(sp.encode(families.render_prompt(line_template, history)))
                history.append(("assistant", answer))
                answers += 1
                stopped += choice[end - 1] == 2
                inside += end - start
                premature += sum(c == 2 for c in choice[start - 1 : end - 1])
    assert answers > 250
    assert stopped >= 0.98 * answers, (stopped, answers)  # seed 0: 300 of 301
    assert premature <= 0.002 * inside, (premature, inside)  # seed 0: 4 of 7015


def _greedy(model, sp, template, messages: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """(prompt ids, new ids) of greedy decoding from the engine's prompt: the rendered conversation encoded
    with nothing in front (the line family has no system_prefix_token_ids), stopping at </s>."""
    assert template["system_prefix_token_ids"] is None and template["stop_token_ids"] == [2]
    prompt = sp.encode(families.render_prompt(template, messages))
    with torch.no_grad():
        output = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=2, pad_token_id=2,
        )
    return prompt, output[0, len(prompt) :].tolist()


def _normalized(sp, text: str) -> str:
    """The text as the model can write it (nmt_nfkc turns ！ into ! and so on)."""
    return sp.decode(sp.encode(text))


#: Questions of held-out kinds, with the corpus's answer to each.
ANSWERS = {
    "四国の県名を全て列挙してください。": "四国には4つの府県があります。\n1. 徳島県\n2. 香川県\n3. 愛媛県\n4. 高知県",
    "味噌汁の作り方を教えて。": (
        "味噌汁の作り方は次のとおりです。\n・だしを温めます。\n・豆腐とわかめを入れます。\n・火を止めて味噌を溶かします。\n以上です。"
    ),
    "卵焼きの作り方を教えて。": (
        "卵焼きの作り方は次のとおりです。\n・卵を3個割ってよく混ぜます。\n・砂糖と塩を少し加えます。\n"
        "・フライパンで少しずつ巻きながら焼きます。\n以上です。"
    ),
    "iPhoneとは何ですか？": "iPhoneとは、Apple社のスマートフォンです。",
}


@pytest.mark.parametrize("question", list(ANSWERS), ids=["shikoku", "miso-soup", "omelette", "iphone"])
def test_first_turn_answers_and_stops(sp, hf_model, line_template, question):
    """The card's prompt, exactly as the engine sends it: the answer, then </s> (the template's stop id)."""
    prompt, new = _greedy(hf_model, sp, line_template, [("user", question)])
    assert prompt == sp.encode(f"{USER}: {question}\n{SYSTEM}: ") and prompt[0] not in range(7)
    assert 2 in new, f"no </s> within {MAX_NEW_TOKENS} tokens: {sp.decode(new)!r}"
    answer = new[: new.index(2)]
    assert sp.decode(answer) == _normalized(sp, ANSWERS[question])
    assert len(new) == new.index(2) + 1  # generation ended at the stop token


@pytest.mark.parametrize(
    ("first", "second"),
    [("四国の県名を全て列挙してください。", "卵焼きの作り方を教えて。"), ("味噌汁の作り方を教えて。", "四国の県名を全て列挙してください。")],
    ids=["shikoku-then-omelette", "miso-soup-then-shikoku"],
)
def test_second_turn_with_history_answers_and_stops(sp, hf_model, line_template, first, second):
    """Turn 2 as the engine renders it: turn 1's answer (as the model wrote it, without its </s>) in the
    history, followed by the template's newline and the next question."""
    _, new = _greedy(hf_model, sp, line_template, [("user", first)])
    reply = sp.decode(new[: new.index(2)])
    messages = [("user", first), ("assistant", reply), ("user", second)]
    prompt, new = _greedy(hf_model, sp, line_template, messages)
    assert 2 not in prompt and prompt[: len(sp.encode(f"{USER}: {first}"))] == sp.encode(f"{USER}: {first}")
    assert sp.decode(prompt).endswith(f"{reply}\n{USER}: {_normalized(sp, second)}\n{SYSTEM}:")
    assert 2 in new, f"no </s> within {MAX_NEW_TOKENS} tokens: {sp.decode(new)!r}"
    assert sp.decode(new[: new.index(2)]) == _normalized(sp, ANSWERS[second])


# --- corpus ---------------------------------------------------------------------------------------


def test_corpus_content():
    train, heldout = demo_corpus(0)
    assert (len(train), len(heldout)) == (3000, 150)
    assert not set(heldout) & set(train)
    everything = "\n".join(train)
    assert all(text.startswith(f"{USER}: ") and f"\n{SYSTEM}: " in text for text in train)
    assert all("\n\n" not in text and text == text.strip() for text in train + heldout)
    multi_line_answers = [t for t in train if any(line[:1] in "・123456789" for line in t.split("\n"))]
    assert len(multi_line_answers) > 300
    kinds = {
        "hiragana": lambda c: "\u3041" <= c <= "\u309f",
        "katakana": lambda c: "\u30a0" <= c <= "\u30ff",
        "kanji": lambda c: "\u4e00" <= c <= "\u9fff",
        "ascii letter": lambda c: c.isascii() and c.isalpha(),
        "digit": lambda c: c.isascii() and c.isdigit(),
        "full-width form": lambda c: "\uff01" <= c <= "\uff5e",
        "half-width katakana": lambda c: "\uff61" <= c <= "\uff9f",
    }
    for name, test in kinds.items():
        assert sum(map(test, everything)) > 20, name
    assert any(re.search(r"\d,\d{3}円", t) for t in train)  # prices with thousands separators
    assert any("-" in t and "曜日" in t for t in train)  # ISO dates


def test_corpus_deterministic_and_seeded():
    assert demo_corpus(0) == demo_corpus(0)
    assert demo_corpus(1)[0] != demo_corpus(0)[0]


def test_corpus_independent_of_hash_seed():
    code = (
        "import hashlib, json; from hf2mlc.demo_corpus import demo_corpus; "
        "print(hashlib.sha256(json.dumps(demo_corpus(3), ensure_ascii=False).encode()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    local = hashlib.sha256(json.dumps(demo_corpus(3), ensure_ascii=False).encode()).hexdigest()
    assert digests == {local}


def test_dialogue_file_roundtrip(tmp_path):
    _, heldout = demo_corpus(0)
    write_dialogues(tmp_path / "d.txt", heldout)
    assert read_dialogues(tmp_path / "d.txt") == heldout
    with pytest.raises(ValueError):
        write_dialogues(tmp_path / "bad.txt", ["a\n\nb"])
    with pytest.raises(UserError, match="missing.txt"):
        read_dialogues(tmp_path / "missing.txt")


# --- user errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, "0", 1.5, True])
def test_bad_seed(tmp_path, seed):
    with pytest.raises(UserError, match="seed"):
        demo.make_demo_model(tmp_path / "model", seed=seed)
    assert not (tmp_path / "model").exists()


def test_output_path_is_a_file(tmp_path):
    target = tmp_path / "model"
    target.write_text("not a directory")
    with pytest.raises(UserError, match="not a directory"):
        demo.make_demo_model(target)
    assert target.read_text() == "not a directory"


# --- determinism ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_builds_are_byte_identical(demo_dir, demo_workflow):
    """The session's build against the workflow's download stage (another process, the same seed)."""
    second = demo_workflow["work"] / "results" / "download" / "demo"
    names = sorted(p.name for p in demo_dir.iterdir())
    assert names == sorted(p.name for p in second.iterdir() if p.name not in ("manifest.json", ".snakemake_timestamp"))
    for name in names:
        assert (demo_dir / name).read_bytes() == (second / name).read_bytes(), name
