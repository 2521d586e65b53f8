"""The references (SentencePiece itself, transformers' slow tokenizer) and the checks against them."""

from __future__ import annotations

import importlib.metadata
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .cases import Case
from .names import SPECIAL_TOKEN_KEYS
from .normalizer import all_code_points, differing, neutral_separator
from .proto import SentencePieceModel, charsmap_table


class SentencePieceReference:
    """Slow-tokenizer semantics on top of ``sentencepiece``: declared special tokens are cut out of the
    text (longest first, left to right) and every other segment is encoded by SentencePiece on its own."""

    def __init__(self, spiece: Path, special_tokens: Iterable[str]) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(spiece))
        tokens = sorted(set(special_tokens), key=lambda t: (-len(t), t))
        self.special_ids = {t: self.sp.piece_to_id(t) for t in tokens}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in tokens) + ")") if tokens else None

    def encode(self, text: str) -> list[int]:
        if self._split is None:
            return list(self.sp.encode(text))
        ids: list[int] = []
        for i, segment in enumerate(self._split.split(text)):
            if i % 2:
                ids.append(self.special_ids[segment])
            elif segment:
                ids.extend(self.sp.encode(segment))
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)


def transformers_slow_tokenizer(spiece: Path, declared: dict[str, str]) -> tuple[Any | None, str]:
    """transformers' slow SentencePiece tokenizer (what ``T5Tokenizer(use_fast=False)`` was), if it loads."""
    try:
        from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

        kwargs = {k: v for k, v in declared.items() if k in SPECIAL_TOKEN_KEYS}
        extras = [v for k, v in sorted(declared.items()) if not k.endswith("_token")]
        slow = SentencePieceBackend(vocab_file=str(spiece), additional_special_tokens=extras or None, **kwargs)
        return slow, "transformers " + importlib.metadata.version("transformers")
    except Exception as err:  # the slow path moves between transformers versions: report, don't fail
        return None, f"unavailable: {type(err).__name__}: {err}"


# ---------------------------------------------------------------------------------------------------
# The parity check


def check_parity(
    tokenizer_json: Path,
    spiece: Path,
    cases: Sequence[Case],
    special_tokens: Iterable[str] = (),
    *,
    slow: Any | None = None,
) -> dict[str, Any]:
    """Compare ``tokenizer_json`` with SentencePiece (and ``slow``, a transformers slow tokenizer) on ``cases``.

    Per case: token ids (``add_special_tokens=False``) must equal both references, and the decoded text
    (``skip_special_tokens=True``, as SentencePiece hides control pieces) must equal SentencePiece's
    decoding.  Returns a report; ``report["mismatches"]`` names every failing case.
    """
    from tokenizers import Tokenizer

    fast = Tokenizer.from_file(str(tokenizer_json))
    reference = SentencePieceReference(Path(spiece), special_tokens)
    byte_ids = {i for i in range(reference.sp.get_piece_size()) if reference.sp.is_byte(i)}
    unk_id = reference.sp.unk_id()
    mismatches: list[dict[str, Any]] = []
    ids_ok = decode_ok = slow_ok = 0
    total_tokens = byte_tokens = unk_tokens = 0
    for case in cases:
        fast_ids = fast.encode(case.text, add_special_tokens=False).ids
        ref_ids = reference.encode(case.text)
        slow_ids = slow.encode(case.text, add_special_tokens=False) if slow is not None else ref_ids
        fast_text = fast.decode(fast_ids, skip_special_tokens=True)
        ref_text = reference.decode(ref_ids)
        total_tokens += len(ref_ids)
        byte_tokens += sum(1 for i in ref_ids if i in byte_ids)
        unk_tokens += sum(1 for i in ref_ids if i == unk_id)
        same_ids = fast_ids == ref_ids
        same_slow = fast_ids == slow_ids
        same_text = fast_text == ref_text
        ids_ok += same_ids
        slow_ok += same_slow
        decode_ok += same_text
        if not (same_ids and same_slow and same_text):
            entry: dict[str, Any] = {
                "case": case.name,
                "text": case.text,
                "tokenizer_json_ids": fast_ids,
                "sentencepiece_ids": ref_ids,
                "tokenizer_json_decoded": fast_text,
                "sentencepiece_decoded": ref_text,
            }
            if slow is not None:
                entry["transformers_slow_ids"] = slow_ids
            mismatches.append(entry)
    n = len(cases)
    return {
        "cases": n,
        "ids_match_sentencepiece": ids_ok,
        "ids_match_transformers_slow": slow_ok if slow is not None else None,
        "decoded_match_sentencepiece": decode_ok,
        "parity": round((n - len(mismatches)) / n, 6) if n else 0.0,
        "tokens": total_tokens,
        "byte_fallback_tokens": byte_tokens,
        "unk_tokens": unk_tokens,
        "mismatches": mismatches,
    }


def normalizer_sweep(sp: SentencePieceModel, tokenizer: Any, spiece: Path, *, limit: int = 20) -> dict[str, Any]:
    """Every assigned code point, and every multi-character key of the map, through SentencePiece's
    normalizer and tokenizer.json's.  The parity cases decide pass or fail; this says how far text outside
    them can be off."""
    import sentencepiece as spm

    table = charsmap_table(sp.precompiled_charsmap)
    if not table:
        return {"charsmap_entries": 0}
    ours = tokenizer.normalizer.normalize_str
    theirs = spm.SentencePieceProcessor(model_file=str(spiece)).normalize
    separator = neutral_separator(table, ours, theirs)
    report: dict[str, Any] = {"charsmap_entries": len(table), "unicode_version": unicodedata.unidata_version}
    # Every assigned code point (unassigned and private-use ones only where the map mentions them).
    in_map = {c for key in table for c in key}
    points = [c for c in all_code_points() if c in in_map or unicodedata.category(c) not in ("Cn", "Co")]
    groups = (("code_points", points), ("multi_char_keys", sorted(k for k in table if len(k) > 1)))
    for label, items in groups:
        differ = differing(items, ours, theirs, separator)
        report[label] = {
            "checked": len(items),
            "differ": len(differ),
            "examples": [
                {
                    "code_points": " ".join(f"U+{ord(c):04X}" for c in item),
                    "sentencepiece": theirs(item),
                    "tokenizer_json": ours(item),
                }
                for item in differ[:limit]
            ],
        }
    return report


def check_shipped(
    shipped: Any, reference: Any, cases: Sequence[Case], *, byte_ids: set[int] | None = None, unk_id: int | None = None
) -> dict[str, Any]:
    """Compare the tokenizer a bundle ships (as MLC's runtime loads it: :mod:`.bundle`) with the reference
    on ``cases``: token ids, and decoded text.  Both are :class:`~.bundle.BundleTokenizer`-like (``encode``,
    ``decode``).  ``report["mismatches"]`` names every failing case; the stage refuses the bundle if any."""
    byte_ids = byte_ids or set()
    mismatches: list[dict[str, Any]] = []
    ids_ok = decode_ok = total_tokens = byte_tokens = unk_tokens = 0
    for case in cases:
        ours, theirs = shipped.encode(case.text), reference.encode(case.text)
        ours_text, theirs_text = shipped.decode(ours), reference.decode(theirs)
        total_tokens += len(theirs)
        byte_tokens += sum(1 for i in theirs if i in byte_ids)
        unk_tokens += sum(1 for i in theirs if i == unk_id)
        ids_ok += ours == theirs
        decode_ok += ours_text == theirs_text
        if ours != theirs or ours_text != theirs_text:
            mismatches.append({
                "case": case.name,
                "text": case.text,
                "shipped_ids": ours,
                "reference_ids": theirs,
                "shipped_decoded": ours_text,
                "reference_decoded": theirs_text,
            })
    n = len(cases)
    return {
        "cases": n,
        "ids_match": ids_ok,
        "decoded_match": decode_ok,
        "parity": round((n - len(mismatches)) / n, 6) if n else 0.0,
        "tokens": total_tokens,
        "byte_fallback_tokens": byte_tokens,
        "unk_tokens": unk_tokens,
        "mismatches": mismatches,
    }
