"""Real files nobody on this project wrote (tokenizers, texts), read where CI keeps them: ``../shared/data``
beside the checkout (``HF2MLC_SHARED_DATA`` points elsewhere).  Never copied into the project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("HF2MLC_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


def shared_file(*parts: str) -> Path:
    """The path of a shared file, or skip the test saying where it was looked for."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is absent: real tokenizers and texts come from ../shared/data beside the checkout (CI has it)")
    return path


def novel_lines() -> list[str]:
    """Every line of 吾輩は猫である (Aozora Bunko text with ruby markup), empty lines included."""
    return shared_file("text", "wagahaiwa_nekodearu.txt").read_text(encoding="utf-8").split("\n")


def english_lines() -> list[str]:
    """English prose nobody here wrote: the license texts that come with the shared tokenizers."""
    names = ("LICENSE.sentencepiece", "tokenizers/LICENSE.llm-jp-tokenizer",
             "tokenizers/LICENSE.rinna-japanese-pretrained-models")
    return [line for name in names for line in shared_file(*name.split("/")).read_text(encoding="utf-8").split("\n")]
