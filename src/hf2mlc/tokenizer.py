"""``spiece.model`` → ``tokenizer.json`` that reproduces SentencePiece, and the parity check that proves it.

LINE ships its tokenizer as a SentencePiece unigram model with byte fallback; MLC LLM's runtime reads a
Hugging Face ``tokenizer.json``.  transformers' T5 converter (what the 2023 write-up used) drops byte
fallback, so rare kanji and emoji became ``<unk>``.  This module builds ``tokenizer.json`` directly from
the model proto with the ``tokenizers`` library and then checks it, case by case, against SentencePiece
itself (and transformers' slow SentencePiece path) on a Japanese test set the project owns.

Why the pieces are put together the way they are (each point was found by a mismatch):

* **Normalizer.**  ``tokenizers``' ``Precompiled`` normalizer applies SentencePiece's character map per
  grapheme cluster and drops or splits combining marks (``ﾊﾞ`` → ``ハ`` + ``゙`` where SentencePiece gives
  ``バ``).  Instead the map is decoded here and expressed as ``NFKC`` plus ``Replace`` rules: for every
  code point where the map and ``tokenizers``' NFKC disagree (NMT control-character removal, space
  variants, characters newer than ``tokenizers``' Unicode tables), for the few keys NFKC does not
  reproduce, and placeholders around NFKC where it would act across characters the map treats apart
  (see :class:`NormalizerPlan`).  The stage sweeps every assigned code point and every key of the map
  through both normalizers and reports what still differs (nothing, for nmt_nfkc).
* **Whitespace.**  SentencePiece strips leading/trailing spaces and collapses runs (``remove_extra_
  whitespaces``), prepends ``▁`` (``add_dummy_prefix``) and escapes spaces as ``▁``; these are regex
  ``Replace`` steps and a ``Prepend`` on the whole text, with no pre-tokenizer splitting, so the unigram
  Viterbi runs over the same string SentencePiece sees.
* **Invisible pieces.**  SentencePiece never matches ``<0x41>`` (a byte piece) or an undeclared ``</s>``
  typed in the text; the ``tokenizers`` unigram lattice would.  A ``Split`` pre-tokenizer cuts such text
  after its first character, only where no normal piece spans the cut, so nothing else changes.
* **Special tokens** declared by the model (``tokenizer_config.json``, ``special_tokens_map.json``) are
  split from the text before normalization, as the slow tokenizer does; SentencePiece's control pieces are
  ``special`` (invisible when decoding with ``skip_special_tokens``, as SentencePiece decodes them);
  ``<unk>`` is not, and decodes to SentencePiece's ``unk_surface``.
* **Decoder.**  Byte pieces are joined (``ByteFallback``), then leading ``▁`` stripped the way
  SentencePiece strips the beginning-of-sentence space, then ``▁`` → space.  MLC detects
  ``token_postproc_method = byte_fallback`` and ``prepend_space_in_encode`` from these components.

Neither the converted ``tokenizer.json`` nor the reference adds BOS/EOS: MLC encodes prompts without
special tokens, and so does LINE's model card; a family that wants BOS says so in its template.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.resources
import json
import re
import struct
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from . import layout
from .errors import UserError
from .manifest import write_json

SPIECE_NAME = "spiece.model"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
PARITY_REPORT = layout.PARITY_REPORT
DEFAULT_CASES = "tokenizer_cases_ja.txt"

#: Files MLC's ``gen_config`` copies next to the weights, in the order it looks for them.
MLC_TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer_config.json",
)

SPACE_SYMBOL = "\u2581"
DEFAULT_UNK_SURFACE = " \u2047 "

# SentencePiece piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM = 1
PIECE_KINDS = {NORMAL: "normal", UNKNOWN: "unknown", CONTROL: "control", USER_DEFINED: "user_defined",
               UNUSED: "unused", BYTE: "byte"}

#: transformers' special-token attribute names, as written in tokenizer_config.json / special_tokens_map.json.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# ---------------------------------------------------------------------------------------------------
# Reading the SentencePiece model proto.  A few dozen lines of wire-format parsing instead of a protobuf
# dependency: only the fields below are read, everything else is skipped.


@dataclasses.dataclass(frozen=True)
class Piece:
    piece: str
    score: float
    type: int


@dataclasses.dataclass(frozen=True)
class SentencePieceModel:
    """The parts of a SentencePiece ``ModelProto`` that decide how text is tokenized."""

    pieces: tuple[Piece, ...]
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    unk_id: int = 0
    unk_surface: str = DEFAULT_UNK_SURFACE
    treat_whitespace_as_suffix: bool = False
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    denormalizer_charsmap: bytes = b""

    def ids_of_type(self, *types: int) -> list[int]:
        return [i for i, p in enumerate(self.pieces) if p.type in types]

    def piece_to_id(self, piece: str) -> int | None:
        return self._ids.get(piece)

    def kind(self, piece: str) -> str:
        """``normal``, ``unknown``, ``control``, ``user_defined``, ``unused`` or ``byte``; ``missing`` if absent."""
        piece_id = self._ids.get(piece)
        return "missing" if piece_id is None else PIECE_KINDS[self.pieces[piece_id].type]

    @functools.cached_property
    def _ids(self) -> dict[str, int]:
        ids: dict[str, int] = {}
        for i, p in enumerate(self.pieces):
            ids.setdefault(p.piece, i)
        return ids


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def _fields(data: bytes) -> Iterable[tuple[int, Any]]:
    """(field number, raw value) pairs of one protobuf message: ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def _signed(value: int) -> int:
    """int32 fields are varint-encoded as 64-bit two's complement (pad_id = -1)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_sentencepiece(data: bytes) -> SentencePieceModel:
    pieces: list[Piece] = []
    trainer: dict[int, Any] = {}
    normalizer: dict[int, Any] = {}
    denormalizer: dict[int, Any] = {}
    for number, value in _fields(data):
        if number == 1:
            piece, score, kind = "", 0.0, NORMAL
            for sub, raw in _fields(value):
                if sub == 1:
                    piece = raw.decode("utf-8")
                elif sub == 2:
                    score = struct.unpack("<f", raw)[0]
                elif sub == 3:
                    kind = raw
            pieces.append(Piece(piece, score, kind))
        elif number in (2, 3, 5):
            target = {2: trainer, 3: normalizer, 5: denormalizer}[number]
            for sub, raw in _fields(value):
                target[sub] = raw
    return SentencePieceModel(
        pieces=tuple(pieces),
        model_type=trainer.get(3, UNIGRAM),
        byte_fallback=bool(trainer.get(35, 0)),
        unk_id=_signed(trainer.get(40, 0)),
        unk_surface=trainer[44].decode("utf-8") if 44 in trainer else DEFAULT_UNK_SURFACE,
        treat_whitespace_as_suffix=bool(trainer.get(24, 0)),
        normalizer_name=normalizer.get(1, b"").decode("utf-8"),
        precompiled_charsmap=normalizer.get(2, b""),
        add_dummy_prefix=bool(normalizer.get(3, 1)),
        remove_extra_whitespaces=bool(normalizer.get(4, 1)),
        escape_whitespaces=bool(normalizer.get(5, 1)),
        denormalizer_charsmap=denormalizer.get(2, b""),
    )


def read_sentencepiece(path: Path) -> SentencePieceModel:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read the SentencePiece model ({err.strerror}).") from err
    try:
        model = parse_sentencepiece(data)
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as err:
        raise UserError(f"{path}: not a SentencePiece model file ({err}).") from err
    if not model.pieces:
        raise UserError(f"{path}: not a SentencePiece model file (no pieces).")
    return model


def charsmap_table(blob: bytes) -> dict[str, str]:
    """Decode SentencePiece's ``precompiled_charsmap`` into {source string: normalized string}.

    The blob is ``<uint32 trie size><darts-clone double array><NUL-terminated normalized strings>``; leaf
    values are offsets into the strings.  darts-clone shares common suffixes (the trie is a DAG: about 45k
    units hold nmt_nfkc's 225k keys), so children are indexed once and every path is walked.
    """
    if not blob:
        return {}
    (size,) = struct.unpack_from("<I", blob, 0)
    units = struct.unpack_from(f"<{size // 4}I", blob, 4)
    strings = blob[4 + size :]

    def base(pos: int) -> int:
        unit = units[pos]
        return pos ^ ((unit >> 10) << ((unit & (1 << 9)) >> 6))

    children: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for pos, unit in enumerate(units):
        label = unit & ((1 << 31) | 0xFF)
        if 0 < label < 256:
            children[pos ^ label].append((label, pos))
    table: dict[str, str] = {}
    stack: list[tuple[int, bytes]] = [(0, b"")]
    while stack:
        pos, key = stack.pop()
        node_base = base(pos)
        if (units[pos] >> 8) & 1:  # has a leaf: the key so far is complete
            value = units[node_base] & 0x7FFFFFFF
            table[key.decode("utf-8")] = strings[value : strings.index(b"\0", value)].decode("utf-8")
        for label, child in children.get(node_base, ()):
            if child != pos:
                stack.append((child, key + bytes([label])))
    return table


# ---------------------------------------------------------------------------------------------------
# Building tokenizer.json


def _char_class(chars: Iterable[str]) -> str:
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


def _all_code_points() -> list[str]:
    return [chr(cp) for cp in range(1, 0x110000) if not 0xD800 <= cp <= 0xDFFF]


def _neutral_separator(table: dict[str, str], *keep: Callable[[str], str]) -> str:
    """A character SentencePiece's map and every ``keep`` function leave alone, to batch many inputs into one call."""
    for candidate in ("\ue000", "\U000f0000", "|"):
        if candidate in table or any(candidate in key for key in table):
            continue
        if all(fn(f"a{candidate}a").endswith(f"a{candidate}a") for fn in keep):
            return candidate
    raise RuntimeError("no neutral separator found for batching the normalizer check")


def _batched_map(texts: Sequence[str], fn: Callable[[str], str], separator: str, size: int = 4096) -> list[str]:
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
    points = _all_code_points()
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
            orders.append(f"(?<={_char_class(last_ccc[ccc])})(?={_char_class(lower)})")
    # "A mark comes next" first: one cheap test that fails at almost every position.
    any_last = _char_class(c for chars in last_ccc.values() for c in chars)
    any_first = _char_class(c for chars in first_ccc.values() for c in chars)
    alternatives.append(f"(?={any_first})(?<={any_last})(?:{'|'.join(orders)})")
    # Compositions across two characters that are no key.
    lefts = [
        c for c, nfkd in decomposed.items() if nfkd[-1] in firsts or unicodedata.normalize("NFKC", c)[-1:] in firsts
    ]
    rights = [c for c, nfkd in decomposed.items() if nfkd[0] in seconds]
    pairs = [a + b for a in lefts for b in rights if a + b not in table]
    together = _batched_map(pairs, nfkc, separator)
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
            f"(?<={_char_class(left_chars)})(?={_char_class(right_chars)})"
            for right_chars, left_chars in sorted(by_rights.items())
        )
        any_right = _char_class(c for right_chars in by_rights for c in right_chars)
        alternatives.append(f"(?={any_right})(?:{compositions})")
    # A low-class mark (overlay, nukta, kana voicing, virama) does not stop NFKC from composing the base
    # with the mark after it (Y + U+309A + U+0301 → Ý + U+309A); SentencePiece has no such key.
    low = [c for k, chars in first_ccc.items() if k < 10 for c in chars if len(decomposed[c]) == 1]
    higher = [c for c in rights if 10 <= unicodedata.combining(decomposed[c][0])]
    if low and higher:
        alternatives.append(f"(?={_char_class(higher)})(?<={_char_class(low)})")
    lv_syllables = [chr(0xAC00 + 28 * i) for i in range(19 * 21)]
    t_jamo = [c for c, nfkd in decomposed.items() if "\u11a8" <= nfkd[0] <= "\u11c2"]
    alternatives.append(f"(?={_char_class(t_jamo)})(?<={_char_class(lv_syllables)})")
    return "|".join(alternatives)


def plan_normalizer(sp: SentencePieceModel, table: dict[str, str]) -> NormalizerPlan:
    """Find where NFKC differs from SentencePiece's map, code point by code point and key by key."""
    from tokenizers import normalizers

    if not table:
        return NormalizerPlan()
    nfkc = normalizers.NFKC().normalize_str
    user_defined = {p.piece for p in sp.pieces if p.type == USER_DEFINED}
    points = _all_code_points()
    separator = _neutral_separator(table, nfkc)
    plan = NormalizerPlan(uses_nfkc=True, space_symbol=table.get(SPACE_SYMBOL, SPACE_SYMBOL))
    deltas: dict[str, list[str]] = defaultdict(list)
    keep: list[str] = []
    for char, after_nfkc in zip(points, _batched_map(points, nfkc, separator), strict=True):
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
    wrong = _differing(keys, _charmap_normalizer(plan).normalize_str, reference, separator)
    plan.sequences = {key: table[key] for key in wrong}
    plan.sequences_unresolved = _differing(wrong, _charmap_normalizer(plan).normalize_str, reference, separator)
    return plan


def _charmap_normalizer(plan: NormalizerPlan) -> Any:
    from tokenizers import Regex, normalizers

    steps: list[Any] = []
    for key in sorted(plan.sequences, key=lambda k: (-len(k), k)):
        steps.append(normalizers.Replace(key, plan.sequences[key]))
    # Largest groups first: the common rewrites (deletions, spaces) run before the rare ones.
    for value in sorted(plan.deltas, key=lambda v: (-len(plan.deltas[v]), v)):
        chars = [c for c in plan.deltas[value] if c != plan.blank]
        if chars:
            steps.append(normalizers.Replace(Regex(_char_class(chars)), value or plan.blank))
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


def _normalizer(sp: SentencePieceModel, plan: NormalizerPlan) -> Any:
    """The character map (if any), then SentencePiece's whitespace handling on the whole text."""
    from tokenizers import Regex, normalizers

    # SentencePiece adds the dummy prefix to any text that is not empty before normalization; without
    # remove_extra_whitespaces that includes text the map deletes entirely, so the prefix goes first
    # (where the map gives "▁" back as "▁", or as a space that is escaped again).
    survives = plan.space_symbol == SPACE_SYMBOL or (sp.escape_whitespaces and plan.space_symbol == " ")
    prefix_first = sp.add_dummy_prefix and not sp.remove_extra_whitespaces and survives
    steps: list[Any] = [normalizers.Prepend(SPACE_SYMBOL)] if prefix_first else []
    if plan.uses_nfkc:
        steps.extend(_charmap_normalizer(plan))
    if sp.remove_extra_whitespaces:
        steps.append(normalizers.Replace(Regex(" {2,}"), " "))
        steps.append(normalizers.Replace(Regex(r"\A +| +\z"), ""))
    if sp.add_dummy_prefix and not prefix_first:
        steps.append(normalizers.Prepend(SPACE_SYMBOL))
    if sp.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE_SYMBOL))
        if sp.remove_extra_whitespaces:
            steps.append(normalizers.Replace(Regex(SPACE_SYMBOL + r"+\z"), ""))
    return normalizers.Sequence(steps)


def _decoder(sp: SentencePieceModel) -> Any:
    from tokenizers import Regex, decoders

    unk_piece = sp.pieces[sp.unk_id].piece
    steps: list[Any] = [decoders.Replace(Regex(r"\A" + re.escape(unk_piece) + r"\z"), sp.unk_surface)]
    if sp.ids_of_type(BYTE):
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    # SentencePiece drops the space of the first piece at the beginning of the text: with remove_extra_
    # whitespaces, of every leading piece until some text is out; otherwise of the first piece only.
    if sp.remove_extra_whitespaces:
        steps.append(decoders.Replace(Regex(r"\A" + SPACE_SYMBOL + "+"), ""))
    elif sp.add_dummy_prefix:
        steps.append(decoders.Replace(Regex(r"\A" + SPACE_SYMBOL), ""))
    steps.append(decoders.Replace(SPACE_SYMBOL, " "))
    return decoders.Sequence(steps)


def _invisible_piece_guard(sp: SentencePieceModel, special_tokens: Iterable[str]) -> Any | None:
    """Pre-tokenizer that keeps pieces SentencePiece never matches in text (byte, control and unknown
    pieces not declared as special tokens) from being matched by the ``tokenizers`` unigram lattice.

    Such text (``<0x41>``, an undeclared ``</s>``) is cut after its first character.  A cut is only made
    where no normal piece contains the two characters around it and, without byte fallback, where one of
    them is a piece (two unknown characters would be one ``<unk>`` in SentencePiece and two after a cut),
    so no other tokenization can change.
    """
    from tokenizers import Regex, pre_tokenizers

    declared = set(special_tokens)
    visible = [p.piece for p in sp.pieces if p.type in (NORMAL, USER_DEFINED)]
    known = {p for p in visible if len(p) == 1}

    def safe(first: str, second: str) -> bool:
        if not sp.byte_fallback and first not in known and second not in known:
            return False
        return not any(first + second in piece for piece in visible)

    alternatives = []
    if sp.ids_of_type(BYTE) and safe("<", "0"):
        alternatives.append(r"<(?=0x[0-9A-F]{2}>)")
    for i in sp.ids_of_type(CONTROL, UNKNOWN):
        piece = sp.pieces[i].piece
        if piece not in declared and len(piece) > 1 and safe(piece[0], piece[1]):
            alternatives.append(re.escape(piece[0]) + "(?=" + re.escape(piece[1:]) + ")")
    if not alternatives:
        return None
    return pre_tokenizers.Split(Regex("|".join(sorted(set(alternatives)))), behavior="merged_with_previous")


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


def _check_supported(sp: SentencePieceModel, spiece: Path) -> None:
    if sp.model_type != UNIGRAM:
        raise UserError(
            f"{spiece}: model_type {sp.model_type} is not a unigram model; hf2mlc converts SentencePiece "
            "unigram models (LINE's, rinna's). Convert a BPE model with transformers' LlamaConverter instead."
        )
    if sp.treat_whitespace_as_suffix:
        raise UserError(f"{spiece}: treat_whitespace_as_suffix is true; hf2mlc supports the prefix form only.")
    if sp.denormalizer_charsmap:
        raise UserError(f"{spiece}: has a denormalizer map, which tokenizer.json cannot express.")
    unused = sp.ids_of_type(UNUSED)
    if unused:
        raise UserError(
            f"{spiece}: has {len(unused)} UNUSED pieces (first id {unused[0]}); tokenizer.json cannot keep "
            "them out of the text the way SentencePiece does."
        )
    if not 0 <= sp.unk_id < len(sp.pieces):
        raise UserError(f"{spiece}: unk_id {sp.unk_id} is outside the vocabulary of {len(sp.pieces)} pieces.")


def convert_sentencepiece(
    sp: SentencePieceModel, special_tokens: Iterable[str], *, source: str = SPIECE_NAME
) -> tuple[Any, NormalizerPlan]:
    """Build the ``tokenizers.Tokenizer`` equivalent of a SentencePiece unigram model."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import Unigram

    _check_supported(sp, Path(source))
    special_tokens = sorted(set(special_tokens), key=lambda c: (sp.piece_to_id(c) or 0, c))
    for content in special_tokens:
        if sp.piece_to_id(content) is None:
            raise UserError(
                f"{source}: the declared special token {content!r} is not a piece of the SentencePiece model; "
                "hf2mlc does not extend the vocabulary. Remove it from tokenizer_config.json/special_tokens_map.json."
            )
    vocab = [(p.piece, float(p.score)) for p in sp.pieces]
    tokenizer = Tokenizer(Unigram(vocab, unk_id=sp.unk_id, byte_fallback=sp.byte_fallback))
    plan = plan_normalizer(sp, charsmap_table(sp.precompiled_charsmap))
    tokenizer.normalizer = _normalizer(sp, plan)
    guard = _invisible_piece_guard(sp, special_tokens)
    if guard is not None:
        tokenizer.pre_tokenizer = guard
    tokenizer.decoder = _decoder(sp)
    # Control pieces are "special" (hidden by skip_special_tokens, as SentencePiece hides them); <unk> and
    # user-defined pieces are not.  All are cut from the text before normalization, as the slow tokenizer does.
    tokenizer.add_tokens([
        AddedToken(content, special=sp.kind(content) == "control", normalized=False, lstrip=False, rstrip=False)
        for content in special_tokens
    ])
    for symbol in (p.piece for p in sp.pieces if p.type == USER_DEFINED):
        got = tokenizer.normalizer.normalize_str(symbol)
        expected = symbol.replace(" ", SPACE_SYMBOL) if sp.escape_whitespaces else symbol
        if sp.add_dummy_prefix and got.startswith(SPACE_SYMBOL) and not expected.startswith(SPACE_SYMBOL):
            got = got[1:]
        if got != expected:
            raise UserError(
                f"{source}: the user-defined piece {symbol!r} is changed by the normalizer ({got!r}); "
                "tokenizer.json cannot protect it the way SentencePiece does."
            )
    return tokenizer, plan


def tokenizer_config(model_dir: Path, declared: dict[str, str]) -> dict[str, Any]:
    """tokenizer_config.json for the converted tokenizer: the generic fast class over tokenizer.json.

    ``T5Tokenizer`` would rebuild its own pipeline (without byte fallback) in transformers 5, so the
    class is ``PreTrainedTokenizerFast``, which loads tokenizer.json as it is.
    """
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    source = model_dir / TOKENIZER_CONFIG
    if source.is_file():
        raw = json.loads(source.read_text(encoding="utf-8"))
        if isinstance(raw.get("model_max_length"), int) and raw["model_max_length"] < 10**9:
            config["model_max_length"] = raw["model_max_length"]
    for key in SPECIAL_TOKEN_KEYS:
        if key in declared:
            config[key] = declared[key]
    extras = [v for k, v in sorted(declared.items()) if k.startswith("additional_special_tokens")]
    if extras:
        config["additional_special_tokens"] = extras
    return config


# ---------------------------------------------------------------------------------------------------
# The parity test set


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    text: str


def default_cases_path() -> Path:
    return Path(str(importlib.resources.files("hf2mlc") / "data" / DEFAULT_CASES))


def load_cases(path: Path) -> list[Case]:
    """Read a case file: ``# section: NAME`` comments name sections, every other non-blank line is one
    case written as a JSON string (so newlines, tabs and edge spaces are explicit escapes)."""
    path = Path(path)
    try:
        # "\n" only: str.splitlines() would also break at U+2028 and friends inside a case.
        lines = [line.rstrip("\r") for line in path.read_text(encoding="utf-8").split("\n")]
    except OSError as err:
        raise UserError(f"{path}: cannot read the tokenizer test cases ({err.strerror}).") from err
    cases: list[Case] = []
    section = "cases"
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            match = re.match(r"#\s*section:\s*(\S+)", stripped)
            if match:
                section = match.group(1)
            continue
        try:
            text = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: a case must be one JSON string per line ({err}).") from err
        if not isinstance(text, str):
            raise UserError(f"{path}:{number}: a case must be a JSON string, got {type(text).__name__}.")
        cases.append(Case(f"{path.name}:{number} [{section}]", text))
    if not cases:
        raise UserError(f"{path}: no test cases.")
    return cases


# ---------------------------------------------------------------------------------------------------
# The references: SentencePiece itself, and transformers' slow (SentencePiece) tokenizer


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


def _differing(
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
    separator = _neutral_separator(table, ours, theirs)
    report: dict[str, Any] = {"charsmap_entries": len(table), "unicode_version": unicodedata.unidata_version}
    # Every assigned code point (unassigned and private-use ones only where the map mentions them).
    in_map = {c for key in table for c in key}
    points = [c for c in _all_code_points() if c in in_map or unicodedata.category(c) not in ("Cn", "Co")]
    groups = (("code_points", points), ("multi_char_keys", sorted(k for k in table if len(k) > 1)))
    for label, items in groups:
        differ = _differing(items, ours, theirs, separator)
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


# ---------------------------------------------------------------------------------------------------
# What MLC LLM reads


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


# ---------------------------------------------------------------------------------------------------
# The stage


def _progress(message: str) -> None:
    print(f"[hf2mlc tokenizer] {message}", file=sys.stderr, flush=True)


def find_spiece(model_dir: Path) -> Path:
    for name in (SPIECE_NAME, "tokenizer.model"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise UserError(
        f"{model_dir}: no {SPIECE_NAME} (or tokenizer.model); the tokenizer stage converts a SentencePiece model."
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _describe(sp: SentencePieceModel, declared: dict[str, str]) -> dict[str, Any]:
    return {
        "vocab_size": len(sp.pieces),
        "model_type": "unigram",
        "byte_fallback": sp.byte_fallback,
        "byte_pieces": len(sp.ids_of_type(BYTE)),
        "normalizer": sp.normalizer_name or "(custom)",
        "add_dummy_prefix": sp.add_dummy_prefix,
        "remove_extra_whitespaces": sp.remove_extra_whitespaces,
        "escape_whitespaces": sp.escape_whitespaces,
        "unk_surface": sp.unk_surface,
        "special_tokens": {
            name: {"content": content, "id": sp.piece_to_id(content), "kind": sp.kind(content)}
            for name, content in sorted(declared.items())
        },
        "user_defined_pieces": [p.piece for p in sp.pieces if p.type == USER_DEFINED],
    }


def _describe_plan(plan: NormalizerPlan) -> dict[str, Any]:
    def point(c: str) -> str:
        return f"U+{ord(c):04X}"

    if not plan.uses_nfkc:
        return {"character_map": "none (SentencePiece's map is empty: identity)"}
    return {
        "character_map": "NFKC with rules",
        "code_points_rewritten_before_nfkc": sum(len(v) for v in plan.deltas.values()),
        "keys_rewritten_literally": len(plan.sequences),
        "keys_unresolved": [" ".join(point(c) for c in key) for key in plan.sequences_unresolved],
        "kept_from_nfkc": {point(c): point(p) for c, p in sorted(plan.protected.items())},
        "not_kept_from_nfkc": [point(c) for c in plan.unprotected],
        "blank": point(plan.blank) if plan.blank else None,
        "blocks_nfkc_across_characters": bool(plan.blocks),
    }


def _failure_report_path(out_dir: Path) -> Path:
    """Beside the stage's final directory: atomic_output_dir works in ``.<final>.tmp-XXXX``, deleted on failure."""
    match = re.match(r"^\.(.+)\.tmp-", out_dir.name)
    final = match.group(1) if match else out_dir.name
    return out_dir.parent / f"{final}.{PARITY_REPORT}"


def build_tokenizer(
    model_dir: Path, out_dir: Path, *, cases: Path | None = None, sweep: bool = True
) -> dict[str, Any]:
    """Write tokenizer.json, tokenizer_config.json and parity-report.json for the model into ``out_dir``.

    ``cases``: the parity test set (default: the package's Japanese set).  ``sweep``: also run every
    assigned code point and every key of SentencePiece's character map through both normalizers (a few
    seconds for nmt_nfkc; reported, not pass/fail).  Raises UserError when any case differs from
    SentencePiece (ids or decoded text); the report is then also written beside ``out_dir``
    (``<name>.parity-report.json``), because a failed stage leaves no directory behind.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    spiece = find_spiece(model_dir)
    sp = read_sentencepiece(spiece)
    declared = declared_special_tokens(model_dir)
    _progress(f"{spiece.name}: {len(sp.pieces)} pieces; building tokenizer.json")
    tokenizer, plan = convert_sentencepiece(sp, declared.values(), source=str(spiece))
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / TOKENIZER_JSON), pretty=True)
    write_json(out_dir / TOKENIZER_CONFIG, tokenizer_config(model_dir, declared))

    cases_path = Path(cases) if cases is not None else default_cases_path()
    case_list = load_cases(cases_path)
    slow, slow_version = transformers_slow_tokenizer(spiece, declared)
    _progress(f"parity on {len(case_list)} cases ({cases_path.name}) against sentencepiece and {slow_version}")
    parity = check_parity(out_dir / TOKENIZER_JSON, spiece, case_list, declared.values(), slow=slow)
    if sweep:
        _progress("sweeping every code point and character-map key through both normalizers")
    swept = normalizer_sweep(sp, tokenizer, spiece) if sweep else {"skipped": True}
    import sentencepiece
    import tokenizers

    report: dict[str, Any] = {
        "source": {"file": spiece.name, "sha256": _sha256(spiece)},
        "cases_file": {"name": cases_path.name, "sha256": _sha256(cases_path)},
        "references": {
            "sentencepiece": sentencepiece.__version__,
            "transformers_slow": slow_version,
            "tokenizers": tokenizers.__version__,
        },
        "tokenizer": _describe(sp, declared),
        "normalizer": _describe_plan(plan) | {"sweep": swept},
        "mlc": mlc_tokenizer_fields(out_dir),
        **parity,
    }
    write_json(out_dir / PARITY_REPORT, report)
    beside = _failure_report_path(out_dir)
    if parity["mismatches"]:
        write_json(beside, report)
        names = ", ".join(m["case"] for m in parity["mismatches"][:5])
        more = len(parity["mismatches"]) - 5
        raise UserError(
            f"{spiece}: tokenizer.json differs from SentencePiece on {len(parity['mismatches'])} of "
            f"{parity['cases']} cases ({names}{f', and {more} more' if more > 0 else ''}); see {beside}."
        )
    beside.unlink(missing_ok=True)
    _progress(
        f"parity 100 %: {parity['cases']} cases, {parity['tokens']} tokens, "
        f"{parity['byte_fallback_tokens']} byte-fallback tokens"
    )
    return report
