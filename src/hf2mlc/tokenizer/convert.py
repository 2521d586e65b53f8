"""``spiece.model`` → ``tokenizer.json`` that reproduces SentencePiece, built from the model proto.

LINE ships its tokenizer as a SentencePiece unigram model with byte fallback; MLC LLM's runtime reads a
Hugging Face ``tokenizer.json``.  transformers' T5 converter (what the 2023 write-up used) drops byte
fallback, so rare kanji and emoji became ``<unk>``.  This module builds ``tokenizer.json`` directly from
the model proto with the ``tokenizers`` library; :mod:`.parity` checks it, case by case, against SentencePiece
itself (and transformers' slow SentencePiece path).

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

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import UserError
from .names import SPECIAL_TOKEN_KEYS, SPIECE_NAME, TOKENIZER_CONFIG
from .normalizer import NormalizerPlan, charmap_normalizer, plan_normalizer
from .proto import BYTE, CONTROL, NORMAL, SPACE_SYMBOL, UNIGRAM, UNKNOWN, UNUSED, USER_DEFINED, SentencePieceModel, charsmap_table


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
        steps.extend(charmap_normalizer(plan))
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
