"""A llama.cpp model file opened through the binding: its facts, its tokenizer, and contexts.

`open_model` checks the file before llama.cpp reads it (`read_model_file_info`: a truncated
GGUF, a control-vector GGUF or a file without an architecture gets a one-line error), and checks
`--gpu-layers` against the build. `vocab_only=True` opens only the vocabulary (milliseconds, no
weights), which is all that preparing a run needs.

`EngineTokenizer` gives llama.cpp's own tokenizer and the GGUF's chat template the shape of a
Hugging Face tokenizer that `cvgen.extract.chat` formats prompts with, so a run's texts are
rendered by the same code whichever engine collects them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvgen.engine.binding import Binding, EngineError, load_binding
from cvgen.extract.chat import render_messages, template_of_model_file
from cvgen.vectors.model_header import ModelFileInfo, read_model_file_info


@dataclass(frozen=True)
class ModelConfig:
    """The config fields cvgen reads from a transformers config, here from the GGUF header
    and llama.cpp (`cvgen.extract.decoder_blocks` reads these names)."""

    model_type: str
    num_hidden_layers: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int | None
    architectures: tuple[str, ...] = ()


class LlamaModel:
    """One model loaded by llama.cpp (`pointer`), with its vocabulary (`vocab`), file facts
    (`info`) and the binding it came from. Close it, or use it as a context manager."""

    def __init__(self, binding: Binding, pointer: Any, info: ModelFileInfo, gpu_layers: int):
        self.binding = binding
        self.llama = binding.llama
        self.pointer = pointer
        self.info = info
        self.gpu_layers = gpu_layers
        self.vocab = self.llama.llama_model_get_vocab(pointer)
        # the header's figures: a vocabulary-only model reports 0 blocks
        self.n_layer = info.n_layer
        self.n_embd = info.n_embd
        self.n_vocab = int(self.llama.llama_vocab_n_tokens(self.vocab))
        context = self.metadata(f"{info.architecture}.context_length")
        self.n_ctx_train = int(context) if context and context.isdigit() else 0

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value of the model as text (None when the file has no `key`)."""
        room = 256
        while True:
            buffer = ctypes.create_string_buffer(room)
            length = self.llama.llama_model_meta_val_str(self.pointer, key.encode(), buffer, room)
            if length < 0:
                return None
            if length < room:
                return buffer.value.decode("utf-8", errors="replace")
            room = length + 1

    @property
    def architecture(self) -> str:
        return self.info.architecture

    def config(self) -> ModelConfig:
        """The model's facts in the names of a transformers config."""
        return ModelConfig(
            model_type=self.info.architecture,
            num_hidden_layers=self.n_layer,
            hidden_size=self.n_embd,
            vocab_size=self.n_vocab,
            max_position_embeddings=self.n_ctx_train if self.n_ctx_train > 0 else None,
        )

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        """llama.cpp's token ids of `text` (with BOS etc. when `add_special`)."""
        raw = text.encode("utf-8")
        room = len(raw) + 8
        buffer = (self.llama.llama_token * room)()
        count = self.llama.llama_tokenize(
            self.vocab, raw, len(raw), buffer, room, add_special, parse_special
        )
        if count < 0:  # the buffer was short: -count is the size needed
            room = -count
            buffer = (self.llama.llama_token * room)()
            count = self.llama.llama_tokenize(
                self.vocab, raw, len(raw), buffer, room, add_special, parse_special
            )
        return [int(token) for token in buffer[:count]]

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        """The text of `tokens` (special tokens dropped unless `special`)."""
        if not tokens:
            return ""
        array = (self.llama.llama_token * len(tokens))(*tokens)
        room = 16 * len(tokens) + 16
        out = ctypes.create_string_buffer(room)
        count = self.llama.llama_detokenize(
            self.vocab, array, len(tokens), out, room, not special, special
        )
        if count < 0:
            room = -count + 1
            out = ctypes.create_string_buffer(room)
            count = self.llama.llama_detokenize(
                self.vocab, array, len(tokens), out, room, not special, special
            )
        return out.raw[:count].decode("utf-8", errors="replace")

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token as llama.cpp renders it (`llama_token_to_piece`): a piece
        may hold part of a UTF-8 character, so streamed text joins pieces before decoding."""
        room = 64
        while True:
            out = ctypes.create_string_buffer(room)
            count = self.llama.llama_token_to_piece(self.vocab, token, out, room, 0, special)
            if count >= 0:
                return out.raw[:count]
            room = -count

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self.llama.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        if self.pointer is not None:
            self.llama.llama_model_free(self.pointer)
            self.pointer = None

    def __enter__(self) -> LlamaModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_gpu_layers(binding: Binding, gpu_layers: int, *, option: str = "--gpu-layers") -> None:
    """Refuse a negative count, or any offload on a build without a GPU backend."""
    if gpu_layers < 0:
        raise EngineError(f"{option}: {gpu_layers} must be 0 (CPU) or a number of blocks")
    if gpu_layers > 0 and not binding.llama.llama_supports_gpu_offload():
        raise EngineError(
            f"{option} {gpu_layers}: this llama.cpp build ({binding.folder}) has no GPU backend; "
            "rebuild llama.cpp with GPU support (e.g. -DGGML_CUDA=ON) or drop the option"
        )


def open_model(path: Path, *, gpu_layers: int = 0, vocab_only: bool = False) -> LlamaModel:
    """Load `path` with llama.cpp (memory-mapped; `gpu_layers` blocks offloaded). The file is
    checked first: a truncated GGUF, a control-vector file or a file that is no model gets a
    one-line `EngineError`/`ControlVectorError` naming it."""
    path = Path(path)
    if path.suffix.lower() != ".gguf" or not path.is_file():
        raise EngineError(f"--model {path}: the llama.cpp engine needs a .gguf model file")
    info = read_model_file_info(path)
    binding = load_binding()
    check_gpu_layers(binding, gpu_layers)
    params = binding.llama.llama_model_default_params()
    params.n_gpu_layers = gpu_layers
    params.vocab_only = vocab_only
    pointer = binding.llama.llama_model_load_from_file(str(path).encode(), params)
    if not pointer:
        raise EngineError(
            f"--model {path}: llama.cpp cannot load it (architecture {info.architecture!r}; "
            "set CVGEN_LLAMA_LOG=1 to see llama.cpp's reason)"
        )
    return LlamaModel(binding, pointer, info, gpu_layers)


class EngineTokenizer:
    """llama.cpp's tokenizer and the GGUF's chat template, in the shape of a Hugging Face
    tokenizer (`chat_template`, `apply_chat_template`, calling it on texts, the special token
    ids) that `cvgen.extract.chat` formats and tokenizes prompts with."""

    def __init__(self, model: LlamaModel):
        self.model = model
        self.template = template_of_model_file(model.info)
        self.chat_template = self.template.text
        llama, vocab = model.llama, model.vocab
        self.bos_token_id = _token_or_none(llama.llama_vocab_bos(vocab))
        self.eos_token_id = _token_or_none(llama.llama_vocab_eos(vocab))
        self.pad_token_id = _token_or_none(llama.llama_vocab_pad(vocab))

    def apply_chat_template(
        self, conversation: Any, *, add_generation_prompt: bool = True, tokenize: bool = False
    ) -> str:
        """The text of `conversation` in the GGUF's template, generation prompt added."""
        if not add_generation_prompt or tokenize:
            raise ValueError("EngineTokenizer renders text with the generation prompt only")
        return render_messages(self.template, conversation)

    def __call__(self, texts: Any, *, add_special_tokens: bool = True) -> dict[str, Any]:
        """{"input_ids": one id list per text}, parsing special-token texts as tokens."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        ids = [self.model.tokenize(text, add_special=add_special_tokens) for text in batch]
        return {"input_ids": ids[0] if isinstance(texts, str) else ids}


def _token_or_none(token: int) -> int | None:
    return int(token) if int(token) >= 0 else None
