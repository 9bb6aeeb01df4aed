"""The llama.cpp engine (issue 14, not built yet): collect block states and score text on the
user's own GGUF through llama.cpp's eval callback, in place of the Hugging Face model.

It will sit between `cvgen.extract` (whose store and shards it fills) and `cvgen.generate`."""
