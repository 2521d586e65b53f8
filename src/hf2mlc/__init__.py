"""hf2mlc: Hugging Face GPT-NeoX models to MLC LLM bundles, compiled with apache-tvm from PyPI."""

__version__ = "0.1.0"
