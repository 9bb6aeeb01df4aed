"""Per-request steering on llama.cpp's own library (the pack's vectors: `cvgen.pack.steering`):
prompts made as llama-server makes them (`prompts`), generation on one live context whose
vectors change per request (`generation`), the worker that serialises requests (`service`), the
OpenAI-compatible HTTP API of `cvgen serve` (`requests`, `api`) and the loop of `cvgen chat`
(`chat`)."""
