"""Model definitions, one package per architecture MLC LLM names (``model_type``): ``gpt_neox``."""
