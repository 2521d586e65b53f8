"""What MLC LLM reads about the tokenizer: the files gen_config copies, and ``tokenizer_info``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .names import MLC_TOKENIZER_FILES, TOKENIZER_JSON
from .proto import SPACE_SYMBOL


def detect_tokenizer_info(tokenizer_json: Path) -> dict[str, Any]:
    """``tokenizer_info`` as MLC's ``Tokenizer::DetectTokenizerInfo`` derives it from tokenizer.json.

    token_postproc_method: the last ByteLevel/ByteFallback decoder (byte_fallback when neither);
    prepend_space_in_encode: a ``Prepend("▁")`` normalizer; strip_space_in_decode: a ``Strip(" ", 1, 0)``
    decoder.  Absent tokenizer.json: MLC's defaults.
    """
    info: dict[str, Any] = {
        "token_postproc_method": "byte_fallback",
        "prepend_space_in_encode": False,
        "strip_space_in_decode": False,
    }
    tokenizer_json = Path(tokenizer_json)
    if not tokenizer_json.is_file():
        return info
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))

    def members(component: Any, key: str) -> list[dict[str, Any]]:
        if not isinstance(component, dict):
            return []
        return list(component.get(key) or []) if component.get("type") == "Sequence" else [component]

    for decoder in members(data.get("decoder"), "decoders"):
        if decoder.get("type") == "ByteLevel":
            info["token_postproc_method"] = "byte_level"
        elif decoder.get("type") == "ByteFallback":
            info["token_postproc_method"] = "byte_fallback"
    for normalizer in members(data.get("normalizer"), "normalizers"):
        if normalizer.get("type") == "Prepend" and normalizer.get("prepend") == SPACE_SYMBOL:
            info["prepend_space_in_encode"] = True
            break
    for decoder in members(data.get("decoder"), "decoders"):
        strip = (decoder.get("type"), decoder.get("content"), decoder.get("start"), decoder.get("stop"))
        if strip == ("Strip", " ", 1, 0):
            info["strip_space_in_decode"] = True
            break
    return info


def mlc_tokenizer_fields(out_dir: Path) -> dict[str, Any]:
    """``tokenizer_files`` and ``tokenizer_info`` of mlc-chat-config.json, filled as MLC's gen_config fills them."""
    out_dir = Path(out_dir)
    return {
        "tokenizer_files": [name for name in MLC_TOKENIZER_FILES if (out_dir / name).is_file()],
        "tokenizer_info": detect_tokenizer_info(out_dir / TOKENIZER_JSON),
    }
