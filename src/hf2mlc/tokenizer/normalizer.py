"""SentencePiece's character map, decoded and re-expressed with ``tokenizers`` normalizer components.

``tokenizers``' ``Precompiled`` normalizer applies the map per grapheme cluster and drops or splits combining
marks (``ﾊﾞ`` → ``ハ`` + ``゙`` where SentencePiece gives ``バ``), so the map is expressed as ``NFKC`` plus
``Replace`` rules instead (see :class:`NormalizerPlan`); every rule was found by a mismatch.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .proto import SPACE_SYMBOL, USER_DEFINED, SentencePieceModel


def char_class(chars: Iterable[str]) -> str:
    """A regex character class for ``chars``, consecutive code points written as ranges."""
    points = sorted({ord(c) for c in chars})
    parts: list[str] = []
    i = 0
    while i < len(points):
        j = i
        while j + 1 < len(points) and points[j + 1] == points[j] + 1:
            j += 1
        parts.append(f"\\x{{{points[i]:X}}}" + (f"-\\x{{{points[j]:X}}}" if j > i else ""))
        i = j + 1
    return "[" + "".join(parts) + "]"


def all_code_points() -> list[str]:
    return [chr(cp) for cp in range(1, 0x110000) if not 0xD800 <= cp <= 0xDFFF]


def neutral_separator(table: dict[str, str], *keep: Callable[[str], str]) -> str:
    """A character SentencePiece's map and every ``keep`` function leave alone, to batch many inputs into one call."""
    for candidate in ("\ue000", "\U000f0000", "|"):
        if candidate in table or any(candidate in key for key in table):
            continue
        if all(fn(f"a{candidate}a").endswith(f"a{candidate}a") for fn in keep):
            return candidate
    raise RuntimeError("no neutral separator found for batching the normalizer check")


def batched_map(texts: Sequence[str], fn: Callable[[str], str], separator: str, size: int = 4096) -> list[str]:
    """``[fn(t) for t in texts]`` in batches joined by a separator ``fn`` keeps; per item where a batch splits wrong."""
    out: list[str] = []
    for start in range(0, len(texts), size):
        chunk = texts[start : start + size]
        parts = fn(separator.join(chunk)).split(separator)
        out.extend(parts if len(parts) == len(chunk) else [fn(t) for t in chunk])
    return out


class CharsMap:
    """SentencePiece's use of its map, in Python: at each position the longest key wins, else the character
    is copied.  ``protected`` strings (user-defined pieces) are matched first and never normalized."""

    def __init__(self, table: dict[str, str], protected: Iterable[str] = ()) -> None:
        self.table = table
        self.longest: dict[str, int] = {}
        for key in table:
            self.longest[key[0]] = max(self.longest.get(key[0], 0), len(key))
        self.protected = sorted(set(protected), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            match = next((p for p in self.protected if text.startswith(p, i)), None) if self.protected else None
            if match is not None:
                out.append(match)
                i += len(match)
                continue
            for length in range(min(self.longest.get(text[i], 0), n - i), 0, -1):
                value = self.table.get(text[i : i + length])
                if value is not None:
                    out.append(value)
                    i += length
                    break
            else:
                out.append(text[i])
                i += 1
        return "".join(out)


@dataclasses.dataclass
class NormalizerPlan:
    """How SentencePiece's character map is expressed with ``tokenizers`` components.

    In order: ``sequences`` (literal rewrites, longest first); ``deltas`` (deletions become ``blank``);
    ``protected`` swaps; ``blank`` inserted at ``blocks``; NFKC; swaps back; ``blank`` removed.
    NFKC works on the whole text and SentencePiece one key at a time: NFKC reorders runs of combining marks
    and composes a Hangul LV syllable with a following T jamo, across characters SentencePiece maps on
    their own, and it composes across a character SentencePiece deletes.  A ``blank`` (a character NFKC
    keeps as a starter and SentencePiece deletes anyway) stands where that must not happen, until NFKC is done.
    """

    uses_nfkc: bool = False
    #: multi-character keys the other steps do not reproduce → their value.
    sequences: dict[str, str] = dataclasses.field(default_factory=dict)
    #: normalized value → the code points SentencePiece maps to it where NFKC does not.
    deltas: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: code point SentencePiece keeps but NFKC would change → the placeholder that carries it past NFKC.
    protected: dict[str, str] = dataclasses.field(default_factory=dict)
    #: code points nothing can keep from NFKC (no placeholder left); reported, and checked by parity.
    unprotected: list[str] = dataclasses.field(default_factory=list)
    #: the placeholder that stands for deletions and blocks NFKC across characters ('' when none is free).
    blank: str = ""
    #: regex of the positions between characters where NFKC must be blocked.
    blocks: str = ""
    #: multi-character keys still different after all of the above; reported.
    sequences_unresolved: list[str] = dataclasses.field(default_factory=list)
    #: what the map makes of "▁" itself.
    space_symbol: str = SPACE_SYMBOL


def _nfkc_blocks(table: dict[str, str], nfkc: Callable[[str], str], separator: str) -> str:
    """Positions where NFKC would reorder or compose across two characters that SentencePiece maps apart.

    * a combining mark followed by one of lower canonical class: NFKC sorts them (decompositions counted);
    * a character followed by one it composes with (``ﬁ`` + U+0323 → ``fị``, ``Å`` + U+0301 → ``Ǻ``) where
      the pair is no key of SentencePiece's map, also with a low-class mark (U+3099) in between;
    * a precomposed LV syllable followed by a T jamo, which NFKC composes and the map does not.
    """
    points = all_code_points()
    decomposed = {c: unicodedata.normalize("NFKD", c) for c in points}
    last_ccc: dict[int, list[str]] = defaultdict(list)
    first_ccc: dict[int, list[str]] = defaultdict(list)
    firsts: set[str] = set()
    seconds: set[str] = set()
    for char, nfkd in decomposed.items():
        if unicodedata.combining(nfkd[-1]):
            last_ccc[unicodedata.combining(nfkd[-1])].append(char)
        if unicodedata.combining(nfkd[0]):
            first_ccc[unicodedata.combining(nfkd[0])].append(char)
        canonical = unicodedata.decomposition(char)
        if canonical and not canonical.startswith("<"):
            pair = [chr(int(x, 16)) for x in canonical.split()]
            if len(pair) == 2 and unicodedata.normalize("NFC", "".join(pair)) == char:
                firsts.add(pair[0])
                seconds.add(pair[1])
    alternatives: list[str] = []
    orders = []
    for ccc in sorted(last_ccc):
        lower = [c for k, chars in first_ccc.items() if k < ccc for c in chars]
        if lower:
            orders.append(f"(?<={char_class(last_ccc[ccc])})(?={char_class(lower)})")
    # "A mark comes next" first: one cheap test that fails at almost every position.
    any_last = char_class(c for chars in last_ccc.values() for c in chars)
    any_first = char_class(c for chars in first_ccc.values() for c in chars)
    alternatives.append(f"(?={any_first})(?<={any_last})(?:{'|'.join(orders)})")
    # Compositions across two characters that are no key.
    lefts = [
        c for c, nfkd in decomposed.items() if nfkd[-1] in firsts or unicodedata.normalize("NFKC", c)[-1:] in firsts
    ]
    rights = [c for c, nfkd in decomposed.items() if nfkd[0] in seconds]
    pairs = [a + b for a in lefts for b in rights if a + b not in table]
    together = batched_map(pairs, nfkc, separator)
    apart = {c: nfkc(c) for c in set(lefts) | set(rights)}
    blocked: dict[str, list[str]] = defaultdict(list)
    for pair, joined in zip(pairs, together, strict=True):
        if joined != apart[pair[0]] + apart[pair[1]]:
            blocked[pair[0]].append(pair[1])
    by_rights: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for left, right_chars in blocked.items():
        by_rights[tuple(sorted(right_chars))].append(left)
    if by_rights:
        compositions = "|".join(
            f"(?<={char_class(left_chars)})(?={char_class(right_chars)})"
            for right_chars, left_chars in sorted(by_rights.items())
        )
        any_right = char_class(c for right_chars in by_rights for c in right_chars)
        alternatives.append(f"(?={any_right})(?:{compositions})")
    # A low-class mark (overlay, nukta, kana voicing, virama) does not stop NFKC from composing the base
    # with the mark after it (Y + U+309A + U+0301 → Ý + U+309A); SentencePiece has no such key.
    low = [c for k, chars in first_ccc.items() if k < 10 for c in chars if len(decomposed[c]) == 1]
    higher = [c for c in rights if 10 <= unicodedata.combining(decomposed[c][0])]
    if low and higher:
        alternatives.append(f"(?={char_class(higher)})(?<={char_class(low)})")
    lv_syllables = [chr(0xAC00 + 28 * i) for i in range(19 * 21)]
    t_jamo = [c for c, nfkd in decomposed.items() if "\u11a8" <= nfkd[0] <= "\u11c2"]
    alternatives.append(f"(?={char_class(t_jamo)})(?<={char_class(lv_syllables)})")
    return "|".join(alternatives)


def plan_normalizer(sp: SentencePieceModel, table: dict[str, str]) -> NormalizerPlan:
    """Find where NFKC differs from SentencePiece's map, code point by code point and key by key."""
    from tokenizers import normalizers

    if not table:
        return NormalizerPlan()
    nfkc = normalizers.NFKC().normalize_str
    user_defined = {p.piece for p in sp.pieces if p.type == USER_DEFINED}
    points = all_code_points()
    separator = neutral_separator(table, nfkc)
    plan = NormalizerPlan(uses_nfkc=True, space_symbol=table.get(SPACE_SYMBOL, SPACE_SYMBOL))
    deltas: dict[str, list[str]] = defaultdict(list)
    keep: list[str] = []
    for char, after_nfkc in zip(points, batched_map(points, nfkc, separator), strict=True):
        # SentencePiece matches user-defined symbols before its map: they are never normalized.
        wanted = char if char in user_defined else table.get(char, char)
        if wanted == after_nfkc:
            continue
        if wanted == char:
            keep.append(char)
        else:
            deltas[wanted].append(char)
    plan.deltas = dict(deltas)
    # Placeholders: characters SentencePiece deletes, NFKC keeps as starters, that appear in no longer key.
    in_longer_keys = {c for key in table if len(key) > 1 for c in key}
    placeholders = [
        c
        for c in deltas.get("", [])
        if nfkc(c) == c and not unicodedata.combining(c) and c not in in_longer_keys and c not in user_defined
    ]
    if placeholders:
        plan.blank = placeholders.pop(0)
        plan.blocks = _nfkc_blocks(table, nfkc, separator)
    for char in keep:
        if placeholders:
            plan.protected[char] = placeholders.pop(0)
        else:
            plan.unprotected.append(char)
    # Multi-character keys: where the steps so far give another value, rewrite the key literally first.
    keys = sorted(k for k in table if len(k) > 1)
    reference = CharsMap(table, protected=user_defined)
    wrong = differing(keys, charmap_normalizer(plan).normalize_str, reference, separator)
    plan.sequences = {key: table[key] for key in wrong}
    plan.sequences_unresolved = differing(wrong, charmap_normalizer(plan).normalize_str, reference, separator)
    return plan


def charmap_normalizer(plan: NormalizerPlan) -> Any:
    from tokenizers import Regex, normalizers

    steps: list[Any] = []
    for key in sorted(plan.sequences, key=lambda k: (-len(k), k)):
        steps.append(normalizers.Replace(key, plan.sequences[key]))
    # Largest groups first: the common rewrites (deletions, spaces) run before the rare ones.
    for value in sorted(plan.deltas, key=lambda v: (-len(plan.deltas[v]), v)):
        chars = [c for c in plan.deltas[value] if c != plan.blank]
        if chars:
            steps.append(normalizers.Replace(Regex(char_class(chars)), value or plan.blank))
    for char, placeholder in sorted(plan.protected.items()):
        steps.append(normalizers.Replace(char, placeholder))
    if plan.blocks:
        steps.append(normalizers.Replace(Regex(plan.blocks), plan.blank))
    steps.append(normalizers.NFKC())
    for char, placeholder in sorted(plan.protected.items()):
        steps.append(normalizers.Replace(placeholder, char))
    if plan.blank:
        steps.append(normalizers.Replace(plan.blank, ""))
    return normalizers.Sequence(steps)


def differing(
    items: Sequence[str], ours: Callable[[str], str], theirs: Callable[[str], str], separator: str, size: int = 2048
) -> list[str]:
    """The items on which two normalizers disagree, each seen between separators.

    Whole batches are compared at once and a disagreeing batch is halved until the items are found, so a
    sweep over every code point stays a few seconds.
    """

    def search(chunk: Sequence[str]) -> list[str]:
        joined = separator + separator.join(chunk) + separator
        if ours(joined) == theirs(joined):
            return []
        if len(chunk) == 1:
            return list(chunk)
        half = len(chunk) // 2
        return search(chunk[:half]) + search(chunk[half:])

    out: list[str] = []
    for start in range(0, len(items), size):
        out.extend(search(items[start : start + size]))
    return out
