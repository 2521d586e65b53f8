"""File names the tokenizer stage reads and writes, and the special-token attributes transformers declares."""

SPIECE_NAME = "spiece.model"
TOKENIZER_JSON = "tokenizer.json"
#: The name MLC's runtime loads a SentencePiece model by (the stage ships spiece.model under it).
TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"

#: Files MLC's ``gen_config`` copies next to the weights, in the order it looks for them.
MLC_TOKENIZER_FILES = (
    TOKENIZER_MODEL,
    TOKENIZER_JSON,
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer_config.json",
)

#: transformers' special-token attribute names, as written in tokenizer_config.json / special_tokens_map.json.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
