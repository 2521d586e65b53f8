"""Model definitions: the GPT-NeoX architecture as MLC LLM lays it out."""
