"""The model's tokenizer, made into what MLC LLM's runtime reads, and proved equal to the model's own.

Rooms: :mod:`.proto` (SentencePiece model files), :mod:`.normalizer` (its character map as ``tokenizers``
components), :mod:`.convert` (SentencePiece → tokenizer.json), :mod:`.cases` (the project's test set),
:mod:`.parity` (the references and the checks), :mod:`.bundle` (text ↔ ids as MLC's runtime does it),
:mod:`.hf_json` (models that ship a tokenizer.json), :mod:`.mlc` (MLC's tokenizer fields), :mod:`.stage`.
"""

from .bundle import BundleTokenizer, bundle_tokenizer, model_tokenizer, model_tokenizer_file
from .cases import Case, default_cases_path, load_cases
from .convert import convert_sentencepiece, tokenizer_config
from .mlc import detect_tokenizer_info, mlc_tokenizer_fields
from .names import (
    DEFAULT_CASES,
    MLC_TOKENIZER_FILES,
    PARITY_REPORT,
    SPECIAL_TOKEN_KEYS,
    SPECIAL_TOKENS_MAP,
    SPIECE_NAME,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    TOKENIZER_MODEL,
)
from .normalizer import CharsMap, NormalizerPlan, plan_normalizer
from .parity import SentencePieceReference, check_parity, check_shipped, normalizer_sweep, transformers_slow_tokenizer
from .proto import (
    BYTE,
    CONTROL,
    NORMAL,
    SPACE_SYMBOL,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
    Piece,
    SentencePieceModel,
    charsmap_table,
    parse_sentencepiece,
    read_sentencepiece,
)
from .special_tokens import declared_special_tokens
from .stage import build_tokenizer, find_spiece, measure_tokenizer_json

__all__ = [
    "BYTE", "CONTROL", "DEFAULT_CASES", "MLC_TOKENIZER_FILES", "NORMAL", "PARITY_REPORT", "SPACE_SYMBOL",
    "SPECIAL_TOKENS_MAP", "SPECIAL_TOKEN_KEYS", "SPIECE_NAME", "TOKENIZER_CONFIG", "TOKENIZER_JSON", "TOKENIZER_MODEL", "UNKNOWN",
    "UNUSED", "USER_DEFINED", "Case", "CharsMap", "NormalizerPlan", "Piece", "SentencePieceModel",
    "BundleTokenizer", "SentencePieceReference", "build_tokenizer", "bundle_tokenizer", "check_shipped", "charsmap_table", "check_parity", "convert_sentencepiece",
    "declared_special_tokens", "default_cases_path", "detect_tokenizer_info", "find_spiece", "load_cases",
    "measure_tokenizer_json", "mlc_tokenizer_fields", "model_tokenizer", "model_tokenizer_file", "normalizer_sweep", "parse_sentencepiece", "plan_normalizer", "read_sentencepiece",
    "tokenizer_config", "transformers_slow_tokenizer",
]
