"""The bundled Japanese evaluation and calibration texts: large enough, and disjoint.

Calibrating on evaluation text would flatter every calibrated method, so no sentence of the calibration
sample may appear in an evaluation text.
"""

from __future__ import annotations

import re
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "src" / "hf2mlc" / "data"
#: The chat scaffolding every chat shares; it is not content.
SCAFFOLD = re.compile(r"^(ユーザー|システム): ")


def _documents(name: str) -> list[str]:
    text = (DATA / name).read_text(encoding="utf-8")
    return [doc for doc in text.split("\n\n") if doc.strip()]


def _sentences(name: str) -> set[str]:
    out = set()
    for doc in _documents(name):
        for line in doc.split("\n"):
            out |= {s for s in re.split(r"(?<=[。？！])", SCAFFOLD.sub("", line)) if len(s) >= 8}
    return out


def _japanese_characters(text: str) -> int:
    return len(re.findall(r"[\u3040-\u30ff\u4e00-\u9fff]", text))


def test_evaluation_text_is_long_varied_japanese() -> None:
    docs = _documents("eval_ja_long.txt")
    text = "\n\n".join(docs)
    assert _japanese_characters(text) >= 18_000 and len(text) >= 20_000
    assert len(docs) >= 40
    chats = [d for d in docs if d.startswith("ユーザー: ")]
    assert 8 <= len(chats) <= len(docs) // 2  # chats, but mostly prose
    assert all("\nシステム: " in d for d in chats)
    assert len({d for d in docs}) == len(docs)


def test_calibration_sample_is_disjoint_from_every_evaluation_text() -> None:
    calibration = _sentences("calib_ja.txt")
    assert 4_000 <= len((DATA / "calib_ja.txt").read_text(encoding="utf-8")) <= 8_000
    assert len(calibration) >= 60
    for evaluation in ("eval_ja_long.txt", "eval_ja.txt"):
        assert calibration & _sentences(evaluation) == set(), evaluation
