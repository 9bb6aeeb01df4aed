"""The llama.cpp engine: collect block states and score text on the user's own GGUF through
llama.cpp's library (llama-cpp-python, the `cvgen[llama]` extra): `binding` loads it, `model`
opens a file, `context` decodes many sequences with block capture (`capture`) and control
vectors, and `collect` plans the decodes and proves a model steerable before collecting.

It sits between `cvgen.llamacpp` and `cvgen.pack`: `cvgen.generate` collects through it and
`cvgen.eval` scores through it."""
