"""GPT-NeoX as MLC LLM lays it out: the config (config.json and MLC's model_config), the parameter
contract between conversion and the compiled library (params), the Relax model (model), and the mapping
of a Hugging Face checkpoint's tensors onto the parameter set (loader)."""
