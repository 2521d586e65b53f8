"""The model's tokenizer, made into what MLC LLM's runtime reads, and proved equal to the model's own.

Rooms: :mod:`.proto` (SentencePiece model files), :mod:`.normalizer` (its character map as ``tokenizers``
components), :mod:`.convert` (SentencePiece → tokenizer.json), :mod:`.cases` (the project's test set),
:mod:`.parity` (the references and the checks), :mod:`.bundle` (text ↔ ids as MLC's runtime does it),
:mod:`.hf_json` (models that ship a tokenizer.json), :mod:`.mlc` (MLC's tokenizer fields), :mod:`.stage`.
"""
