"""`cvgen serve` (issue 15, not built yet): one OpenAI-compatible server that applies a pack's
control vectors per request. It will use `cvgen.vectors` for the arithmetic, `cvgen.pack` for the
manifest and `cvgen.llamacpp` for the server process."""
