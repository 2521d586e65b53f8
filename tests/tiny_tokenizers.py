"""Small tokenizers trained here (a second each), laid out like real model directories.

``byte_level_bpe``: a byte-level BPE tokenizer.json with an NFC normalizer and ``<|endoftext|>`` id 0, as
GPT-NeoX-20B / Pythia ship theirs, with Pythia's tokenizer_config.json and config.json ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def byte_level_bpe(directory: Path, texts: Iterable[str], *, eos_id: int = 0, vocab_size: int = 600) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(list(texts), trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
              "tokenizer_class": "GPTNeoXTokenizer"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    model = {"model_type": "gpt_neox", "vocab_size": vocab_size, "bos_token_id": 0, "eos_token_id": eos_id}
    (directory / "config.json").write_text(json.dumps(model), encoding="utf-8")
    return directory
