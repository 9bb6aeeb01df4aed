"""Requests' prompts as token ids, the way `llama-server` makes them.

A chat's messages are rendered with the GGUF's own chat template (`cvgen.extract.chat`, the
renderer collection uses), with the generation prompt. When llama.cpp's tokenizer adds a BOS
token and the rendered text already begins with the BOS text, that text is dropped first, as
llama.cpp's chat code does, so the prompt never starts with two BOS tokens. The text is then
tokenized with special tokens added and parsed. A completion's prompt is a text (tokenized the
same way) or a list of token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cvgen.common.errors import CvgenError
from cvgen.engine.model import LlamaModel
from cvgen.extract.chat import PromptError, render_messages, template_of_model_file

ROLES = ("system", "user", "assistant", "developer")


class PromptFieldError(CvgenError, ValueError):
    """A prompt or messages field that cannot be turned into tokens; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def message_text(index: int, content: Any) -> str:
    """A message's content: a string, or a list of text parts (`{"type": "text", ...}`)."""
    field = f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part_index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise PromptFieldError(
                    f"{field}[{part_index}]", "only text parts ({'type': 'text'}) are supported"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise PromptFieldError(f"{field}[{part_index}].text", "is not a string")
            texts.append(text)
        return "".join(texts)
    raise PromptFieldError(field, "must be a string or a list of text parts")


class PromptMaker:
    """Chat and completion prompts for one model (see the module docstring)."""

    def __init__(self, model: LlamaModel):
        self.model = model
        self.template = template_of_model_file(model.info)
        llama = model.llama
        self.adds_bos = bool(llama.llama_vocab_get_add_bos(model.vocab))

    @property
    def has_chat_template(self) -> bool:
        return self.template.text is not None

    def chat_text(self, messages: Sequence[Any]) -> str:
        if not isinstance(messages, list) or not messages:
            raise PromptFieldError("messages", "must be a non-empty list of messages")
        turns = []
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise PromptFieldError(f"messages[{index}]", "is not an object")
            role = message.get("role")
            if role not in ROLES:
                raise PromptFieldError(
                    f"messages[{index}].role",
                    f"{role!r} is not one of: {', '.join(ROLES)}",
                )
            turns.append(
                {
                    "role": "system" if role == "developer" else role,
                    "content": message_text(index, message.get("content")),
                }
            )
        if not self.has_chat_template:
            raise PromptFieldError(
                "messages",
                f"the model {self.model.info.path.name} has no chat template; "
                "send a prompt to /v1/completions instead",
            )
        try:
            text = render_messages(self.template, turns)
        except PromptError as exc:
            raise PromptFieldError("messages", str(exc)) from None
        bos = self.template.bos_token
        if self.adds_bos and bos and text.startswith(bos):
            text = text[len(bos) :]
        return text

    def chat_tokens(self, messages: Sequence[Any]) -> list[int]:
        return self.model.tokenize(self.chat_text(messages), add_special=True)

    def completion_tokens(self, prompt: Any) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise PromptFieldError("prompt", "is empty")
            return self.model.tokenize(prompt, add_special=True)
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            return self.completion_tokens(prompt[0])
        if (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            n_vocab = self.model.n_vocab
            for index, token in enumerate(prompt):
                if not 0 <= token < n_vocab:
                    raise PromptFieldError(
                        f"prompt[{index}]", f"token id {token} is outside 0..{n_vocab - 1}"
                    )
            return list(prompt)
        raise PromptFieldError(
            "prompt", "must be a non-empty string, or a list of token ids (one prompt a request)"
        )
