"""Demo variants: small GPT-NeoX models shaped like other real families, to run their conventions end to end.

* ``rinna`` — rinna's japanese-gpt-neox conventions: a SentencePiece unigram tokenizer **without** byte
  fallback (characters outside the vocabulary become ``<unk>``), nmt_nfkc, newlines written as the piece
  ``<NL>`` (the tokenizer cannot encode ``\\n``), ``[PAD]`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3 (eos 3),
  untied embeddings; for the ``rinna`` family.
* ``pythia`` — Pythia's architecture (parallel residual, rotary over a quarter of each head, untied
  embeddings, the vocabulary padded to 50,304) with the real GPT-NeoX-20B ``tokenizer.json`` and no
  SentencePiece model; for the ``plain`` family.  The tokenizer is not part of the project: it is read from
  ``../shared/data`` beside the checkout (``HF2MLC_SHARED_DATA`` points elsewhere), so this variant is for
  tests where that folder exists.

Both train briefly on the demo's corpus as plain text (each dialogue, then eos): valid models of the right
shape and tokenizer, not useful ones.  The default demo (:mod:`hf2mlc.demo`) is untouched by them.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

from .demo import (
    _build_model,
    _deterministic_torch,
    _progress,
    _train,
    heldout_perplexity,
    model_config,
)
from .demo_corpus import demo_corpus
from .errors import UserError
from .manifest import atomic_output_dir, write_json

VARIANTS = ("rinna", "pythia")

#: rinna's special pieces at rinna's ids, and its newline piece.
RINNA_SPECIALS = ("[PAD]", "<unk>", "<s>", "</s>")
RINNA_PAD, RINNA_UNK, RINNA_BOS, RINNA_EOS = 0, 1, 2, 3
NEWLINE_PIECE = "<NL>"
RINNA_VOCAB = 1024

#: Pythia's embedding rows (50,277 tokens padded to a multiple of 128) and its <|endoftext|> id.
PYTHIA_VOCAB = 50304
PYTHIA_EOS = 0
PYTHIA_TOKENIZER = ("tokenizers", "20B_tokenizer.json")

#: Brief training: a valid model, not a good one (steps, batch per variant).  Rows are cut so that a
#: 50k-way softmax stays small.
TRAINING = {"rinna": (40, 8), "pythia": (12, 4)}
MAX_ROW_TOKENS = 128


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout this package runs from, or ``HF2MLC_SHARED_DATA``."""
    return Path(os.environ.get("HF2MLC_SHARED_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data")


def _architecture(variant: str) -> dict[str, Any]:
    """config.json: the demo's sizes, with the family's architecture options and ids."""
    untied = model_config() | {"tie_word_embeddings": False}
    if variant == "rinna":  # rinna/japanese-gpt-neox-3.6b: sequential residual, full rotary, untied
        return untied | {"bos_token_id": RINNA_BOS, "eos_token_id": RINNA_EOS, "vocab_size": RINNA_VOCAB}
    return untied | {"bos_token_id": PYTHIA_EOS, "eos_token_id": PYTHIA_EOS, "rotary_pct": 0.25,
                     "use_parallel_residual": True, "vocab_size": PYTHIA_VOCAB}


def _rinna_text(dialogue: str) -> str:
    """A dialogue as rinna's card writes it: every newline as ``<NL>``."""
    return dialogue.replace("\n", NEWLINE_PIECE)


def _rinna_tokenizer(dialogues: list[str]) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for text in dialogues for line in text.split("\n")]),
        model_writer=model,
        model_type="unigram",
        vocab_size=RINNA_VOCAB,
        byte_fallback=False,
        normalization_rule_name="nmt_nfkc",
        pad_id=RINNA_PAD, unk_id=RINNA_UNK, bos_id=RINNA_BOS, eos_id=RINNA_EOS,
        pad_piece=RINNA_SPECIALS[RINNA_PAD], unk_piece=RINNA_SPECIALS[RINNA_UNK],
        bos_piece=RINNA_SPECIALS[RINNA_BOS], eos_piece=RINNA_SPECIALS[RINNA_EOS],
        user_defined_symbols=[NEWLINE_PIECE],
        character_coverage=0.9995,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def _rows(encode: Any, texts: list[str], eos: int) -> list[tuple[list[int], list[int]]]:
    """Plain language-model rows: each text's ids, each predicting the next, eos after the last (cut short)."""
    rows = []
    for text in texts:
        ids = list(encode(text))[:MAX_ROW_TOKENS]
        rows.append((ids, ids[1:] + [eos]))
    return rows


def _card(variant: str, stats: dict[str, Any]) -> str:
    what = {
        "rinna": "rinna's japanese-gpt-neox conventions: SentencePiece without byte fallback, `<NL>` for newlines, "
                 "`</s>` id 3",
        "pythia": "Pythia's architecture with the GPT-NeoX-20B tokenizer.json (`<|endoftext|>` id 0)",
    }[variant]
    return (f"---\nlicense: apache-2.0\ntags:\n- gpt_neox\n- hf2mlc-demo\n---\n# hf2mlc demo variant `{variant}`\n\n"
            f"A tiny GPT-NeoX that hf2mlc trains itself (seed {stats['seed']}, {stats['steps']} steps) to test {what}. "
            "It is not a useful language model.\n")


def make_variant(out_dir: Path, variant: str, *, seed: int = 0) -> dict[str, Any]:
    """Write demo variant ``variant`` (Hugging Face layout) to ``out_dir``; return statistics about it."""
    if variant not in VARIANTS:
        raise UserError(f"demo variant {variant!r} does not exist; the variants are {', '.join(VARIANTS)}.")
    out_dir = Path(out_dir)
    start = time.perf_counter()
    train_text, heldout_text = demo_corpus(seed)
    files: dict[str, bytes | dict[str, Any]] = {}
    if variant == "rinna":
        import sentencepiece as spm

        train_text, heldout_text = [_rinna_text(t) for t in train_text], [_rinna_text(t) for t in heldout_text]
        spiece = _rinna_tokenizer(train_text)
        sp = spm.SentencePieceProcessor(model_proto=spiece)
        if tuple(sp.id_to_piece(i) for i in range(4)) != RINNA_SPECIALS or sp.get_piece_size() != RINNA_VOCAB:
            raise RuntimeError("the rinna variant's tokenizer layout is wrong")
        encode, eos = sp.encode, RINNA_EOS
        files["spiece.model"] = spiece
        specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "[PAD]"}
        files["tokenizer_config.json"] = specials | {"tokenizer_class": "T5Tokenizer", "do_lower_case": False,
                                                     "extra_ids": 0, "additional_special_tokens": []}
    else:
        from tokenizers import Tokenizer

        path = shared_data_dir().joinpath(*PYTHIA_TOKENIZER)
        if not path.is_file():
            raise UserError(
                f"demo:pythia needs the GPT-NeoX-20B tokenizer.json at {path} (a test-only variant: the file is "
                "not part of hf2mlc); set HF2MLC_SHARED_DATA to the folder that holds tokenizers/20B_tokenizer.json."
            )
        tokenizer = Tokenizer.from_file(str(path))
        encode, eos = (lambda text: tokenizer.encode(text, add_special_tokens=False).ids), PYTHIA_EOS
        files["tokenizer.json"] = path.read_bytes()
        specials = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
        files["tokenizer_config.json"] = specials | {"tokenizer_class": "GPTNeoXTokenizer",
                                                     "add_prefix_space": False}
    files["special_tokens_map.json"] = specials
    config = _architecture(variant)
    files["generation_config.json"] = {"_from_model_config": True, "bos_token_id": config["bos_token_id"],
                                       "eos_token_id": config["eos_token_id"]}
    train_rows, heldout_rows = _rows(encode, train_text, eos), _rows(encode, heldout_text[:20], eos)
    steps, batch = TRAINING[variant]
    _progress(f"variant {variant}: {len(train_rows)} rows, training {steps} steps of {batch}")

    import safetensors.torch
    import torch

    with atomic_output_dir(out_dir) as tmp:
        write_json(tmp / "config.json", config)
        with _deterministic_torch(seed):
            model = _build_model(tmp, tied=False)
            loss = _train(model, train_rows, seed, steps=steps, batch_size=batch, pad_id=eos)
            perplexity = heldout_perplexity(model, heldout_rows, pad_id=eos)
        state = {name: t.detach().to(torch.float16).contiguous() for name, t in model.state_dict().items()}
        safetensors.torch.save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name, content in files.items():
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                write_json(tmp / name, content)
        stats = {"seed": seed, "variant": variant, "vocab_size": config["vocab_size"],
                 "parameters": sum(p.numel() for p in model.parameters()), "steps": steps,
                 "final_train_loss": round(loss, 4), "heldout_perplexity": round(perplexity, 3)}
        (tmp / "README.md").write_text(_card(variant, stats), encoding="utf-8", newline="\n")
        for path in tmp.iterdir():
            path.chmod(0o644)
    stats["timings"] = {"variant": round(time.perf_counter() - start, 3)}
    _progress(f"variant {variant}: loss {loss:.3f}, held-out perplexity {perplexity:.1f} -> {out_dir}")
    return stats
