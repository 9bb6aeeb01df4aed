"""cvgen: generate llama.cpp control vectors from contrastive prompts."""

__version__ = "0.1.0"
