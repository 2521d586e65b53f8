"""GPT-NeoX as MLC LLM lays it out: the config (config.json and MLC's model_config), the parameter
contract between conversion and the compiled library (params), and the Relax model (model)."""
