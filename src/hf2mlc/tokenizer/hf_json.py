"""Models whose tokenizer is a Hugging Face ``tokenizer.json`` (Pythia, GPT-NeoX-20B, RedPajama, open-calm).

MLC's runtime reads such a file as it is, so it is shipped unchanged; what can still be wrong is the file
against the model: a declared special token the vocabulary lacks, an id that disagrees with config.json, a
vocabulary larger than the embedding, or text that does not come back.  Those are checked here.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from .bundle import BundleTokenizer
from .cases import Case
from .special_tokens import declared_special_tokens

#: tokenizers' Unicode normalizers and the form each applies (the round trip's expected text).
UNICODE_FORMS = {"NFC": "NFC", "NFD": "NFD", "NFKC": "NFKC", "NFKD": "NFKD"}

#: config.json's id fields and the tokenizer_config.json attribute each must agree with.
CONFIG_IDS = {"bos_token_id": "bos_token", "eos_token_id": "eos_token", "pad_token_id": "pad_token"}


def _components(component: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(component, dict):
        return []
    if component.get("type") == "Sequence":
        return [c for c in component.get(key) or [] if isinstance(c, dict)]
    return [component]


def describe(path: Path) -> dict[str, Any]:
    """The parts of a tokenizer.json that decide what the model reads, for the report and the card."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a readable tokenizer.json ({err}).") from err
    model = data.get("model") or {}
    return {
        "file": Path(path).name,
        "model_type": model.get("type"),
        "byte_fallback": bool(model.get("byte_fallback")),
        "normalizer": [c.get("type") for c in _components(data.get("normalizer"), "normalizers")],
        "pre_tokenizer": [c.get("type") for c in _components(data.get("pre_tokenizer"), "pretokenizers")],
        "decoder": [c.get("type") for c in _components(data.get("decoder"), "decoders")],
        "added_tokens": [
            {"id": t.get("id"), "content": t.get("content"), "special": bool(t.get("special"))}
            for t in data.get("added_tokens") or []
        ],
    }


def expected_round_trip(text: str, normalizers: Sequence[str]) -> str | None:
    """What decode(encode(text)) must give: the text under the file's Unicode normalizers (None: a
    normalizer hf2mlc has no independent reference for, so the round trip is not judged)."""
    for name in normalizers:
        form = UNICODE_FORMS.get(name)
        if form is None:
            return None
        text = unicodedata.normalize(form, text)
    return text


def validate(model_dir: Path, tokenizer: BundleTokenizer, cases: Sequence[Case]) -> dict[str, Any]:
    """Check a model's tokenizer.json against its config files and the test set; raise UserError on the
    first thing that is wrong for the model; return the report."""
    model_dir = Path(model_dir)
    info = describe(tokenizer.path)
    config_path = model_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    except json.JSONDecodeError as err:
        raise UserError(f"{config_path}: not valid JSON ({err}).") from err
    vocab = config.get("vocab_size")
    if isinstance(vocab, int) and tokenizer.vocab_size > vocab:
        raise UserError(
            f"{tokenizer.path}: {tokenizer.vocab_size} tokens, but config.json's vocab_size is {vocab}: ids from "
            f"{vocab} up have no embedding. Use the tokenizer the model was trained with."
        )
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tokenizer.path))
    declared = declared_special_tokens(model_dir)
    special: dict[str, Any] = {}
    for name, content in sorted(declared.items()):
        token_id = raw.token_to_id(content)
        if token_id is None:
            raise UserError(
                f"{model_dir}: the declared {name} {content!r} is not a token of {tokenizer.path.name}; fix "
                "tokenizer_config.json/special_tokens_map.json or use the tokenizer the model was trained with."
            )
        special[name] = {"content": content, "id": token_id}
    for id_key, name in CONFIG_IDS.items():
        value = config.get(id_key)
        if isinstance(value, int) and name in special and special[name]["id"] != value:
            raise UserError(
                f"{config_path}: {id_key} is {value}, but {name} {special[name]['content']!r} is id "
                f"{special[name]['id']} in {tokenizer.path.name}; the two files disagree."
            )
        if isinstance(value, int) and not 0 <= value < tokenizer.vocab_size:
            raise UserError(f"{config_path}: {id_key} {value} is outside the tokenizer's {tokenizer.vocab_size} tokens.")
    declared_contents = set(declared.values())
    undeclared = [t["content"] for t in info["added_tokens"] if t["special"] and t["content"] not in declared_contents]

    mismatches: list[dict[str, Any]] = []
    judged = tokens = 0
    for case in cases:
        ids = tokenizer.encode(case.text)
        tokens += len(ids)
        expected = expected_round_trip(case.text, info["normalizer"])
        if expected is None:
            continue
        judged += 1
        back = tokenizer.decode(ids)
        if back != expected:
            mismatches.append({"case": case.name, "text": case.text, "ids": ids, "decoded": back, "expected": expected})
    return {
        "tokenizer": info | {"vocab_size": tokenizer.vocab_size, "special_tokens": special},
        "config_ids": {k: config.get(k) for k in CONFIG_IDS if k in config},
        "undeclared_special_tokens": undeclared,
        "cases": len(cases),
        "round_trip_judged": judged,
        "round_trip_match": judged - len(mismatches),
        "parity": round((judged - len(mismatches)) / judged, 6) if judged else 0.0,
        "tokens": tokens,
        "byte_fallback_tokens": 0,
        "mismatches": mismatches,
    }
