"""Applying control vectors to a Hugging Face model in memory, through forward hooks on its
decoder blocks, as context managers: used by `cvgen.eval` and by a later live preview."""
