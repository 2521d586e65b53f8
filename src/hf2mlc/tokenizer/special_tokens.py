"""The special tokens a Hugging Face model declares in its tokenizer config files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from .names import SPECIAL_TOKEN_KEYS, SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG


def declared_special_tokens(model_dir: Path) -> dict[str, str]:
    """{attribute or 'additional_special_tokens[i]': content} from the model's tokenizer config files.

    transformers reads tokenizer_config.json first and lets special_tokens_map.json override it.
    """
    declared: dict[str, str] = {}
    for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP):
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err}).") from err
        for key in SPECIAL_TOKEN_KEYS:
            content = _token_content(raw.get(key))
            if content:
                declared[key] = content
        extras = raw.get("additional_special_tokens") or []
        if extras:
            declared = {k: v for k, v in declared.items() if not k.startswith("additional_special_tokens")}
            for i, token in enumerate(extras):
                content = _token_content(token)
                if content:
                    declared[f"additional_special_tokens[{i}]"] = content
        for entry in (raw.get("added_tokens_decoder") or {}).values():
            content = _token_content(entry)
            if content and isinstance(entry, dict) and entry.get("special"):
                declared.setdefault(f"added_tokens_decoder[{content}]", content)
    return declared


def _token_content(token: Any) -> str | None:
    if isinstance(token, str):
        return token
    if isinstance(token, dict) and isinstance(token.get("content"), str):
        return token["content"]
    return None
