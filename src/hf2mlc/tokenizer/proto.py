"""Reading a SentencePiece model proto: a few dozen lines of wire-format parsing instead of a protobuf
dependency.  Only the fields that decide how text is tokenized are read; everything else is skipped."""

from __future__ import annotations

import dataclasses
import functools
import struct
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import UserError

SPACE_SYMBOL = "\u2581"
DEFAULT_UNK_SURFACE = " \u2047 "

# SentencePiece piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM = 1
PIECE_KINDS = {NORMAL: "normal", UNKNOWN: "unknown", CONTROL: "control", USER_DEFINED: "user_defined",
               UNUSED: "unused", BYTE: "byte"}


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
