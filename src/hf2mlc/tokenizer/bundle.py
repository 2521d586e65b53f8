"""Text ↔ ids exactly as MLC LLM's runtime does it with a bundle's tokenizer files.

MLC's ``Tokenizer::FromPath`` (cpp/tokenizers/tokenizers.cc) loads ``tokenizer.json`` when the directory has
one, else ``tokenizer.model`` through SentencePiece itself; tokenizers-cpp encodes without adding special
tokens and decodes without skipping them.  Everything on the host that turns text into ids for a bundle —
the tokenizer stage's gate, the family check, ``hf2mlc chat``, the evaluation — goes through
:func:`bundle_tokenizer` (or :func:`model_tokenizer` for the file the stage will ship), so the host reads
text the way the phone will.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from .names import SPIECE_NAME, TOKENIZER_JSON, TOKENIZER_MODEL


@dataclasses.dataclass(frozen=True)
class BundleTokenizer:
    """One tokenizer file, loaded by the library MLC's runtime uses for it."""

    #: "sentencepiece" (``tokenizer.model``) or "tokenizers" (``tokenizer.json``).
    kind: str
    path: Path
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    id_to_piece: Callable[[int], str]
    vocab_size: int


def load_sentencepiece(path: Path) -> BundleTokenizer:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(path))
    return BundleTokenizer(
        kind="sentencepiece",
        path=Path(path),
        encode=lambda text: list(processor.encode(text)),
        decode=lambda ids: processor.decode(list(ids)),
        id_to_piece=processor.id_to_piece,
        vocab_size=processor.get_piece_size(),
    )


def load_tokenizer_json(path: Path) -> BundleTokenizer:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for a file it cannot parse
        raise UserError(f"{path}: the tokenizers library cannot load it ({err}).") from err
    return BundleTokenizer(
        kind="tokenizers",
        path=Path(path),
        encode=lambda text: tokenizer.encode(text, add_special_tokens=False).ids,
        decode=lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False),
        id_to_piece=lambda i: tokenizer.id_to_token(i) or "",
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
    )


def bundle_tokenizer(directory: Path) -> BundleTokenizer:
    """The tokenizer MLC's runtime would load from ``directory`` (a bundle or the tokenizer stage's output)."""
    directory = Path(directory)
    if (directory / TOKENIZER_JSON).is_file():
        return load_tokenizer_json(directory / TOKENIZER_JSON)
    if (directory / TOKENIZER_MODEL).is_file():
        return load_sentencepiece(directory / TOKENIZER_MODEL)
    raise UserError(f"{directory}: neither {TOKENIZER_JSON} nor {TOKENIZER_MODEL}; run the tokenizer stage first.")


def model_tokenizer_file(model_dir: Path) -> Path:
    """The file of a Hugging Face model directory the bundle's tokenizer comes from.

    A SentencePiece model wins over a tokenizer.json beside it: it is shipped as ``tokenizer.model`` and so
    tokenizes exactly as SentencePiece does (README: "Tokenizers"), where a converted tokenizer.json does not.
    """
    model_dir = Path(model_dir)
    for name in (SPIECE_NAME, TOKENIZER_MODEL, TOKENIZER_JSON):
        if (model_dir / name).is_file():
            return model_dir / name
    raise UserError(
        f"{model_dir}: no {SPIECE_NAME}, {TOKENIZER_MODEL} or {TOKENIZER_JSON}; the model's tokenizer is missing "
        "from the download (check the repository's files)."
    )


def model_tokenizer(model_dir: Path) -> BundleTokenizer:
    """The model's tokenizer as its bundle will tokenize (see :func:`model_tokenizer_file`)."""
    path = model_tokenizer_file(model_dir)
    return load_tokenizer_json(path) if path.name == TOKENIZER_JSON else load_sentencepiece(path)
