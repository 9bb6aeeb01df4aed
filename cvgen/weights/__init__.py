"""Steering written into a model's weights, for front-ends that cannot load control vectors:
the exact bake of a pack's vectors as FFN-output biases (`bake`), directional enhancement and
ablation (`enhance`), and diff transfer between models (`transfer`), on GGUF files
(`gguf_copy`, with `requantise` for the K-quants) and Hugging Face safetensors folders
(`safetensors_copy`). `describe` is what `cvgen inspect` prints of a file they wrote."""
