"""Chat formatting: turn a (system text, writing prompt) pair into the model's prompt tokens.

By default the system text and the writing prompt are merged into ONE user turn,
`"{system text} {prompt}"`. With `system_turn=True` the system text becomes a real system turn
followed by a user turn holding the prompt. The model's own chat template is applied with the
generation prompt added, so the last token is the end of the assistant header: the position
whose hidden state is read.

Fallback for a model without a chat template (documented in the README): plain text
`"{system text} {prompt}\n"` (or `"{system text}\n\n{prompt}\n"` with a system turn),
tokenised with the tokenizer's own special tokens (e.g. BOS) added. `prompt_format` names which
of the two a tokenizer gets; a pack records it in `pack.json` as `prompt_format`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from cvgen.common.errors import CvgenError

CHAT_TEMPLATE_FORMAT = "chat-template"
PLAIN_FORMAT = "plain"
PROMPT_FORMATS = (CHAT_TEMPLATE_FORMAT, PLAIN_FORMAT)


class PromptError(CvgenError, ValueError):
    """A prompt cannot be formatted for this model."""


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer that prompt formatting uses."""

    chat_template: Any

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def __call__(self, text: Any, **kwargs: Any) -> Any: ...


def build_conversation(system_text: str, prompt: str, *, system_turn: bool) -> list[dict[str, str]]:
    """The chat messages for one text: one user turn, or a system turn plus a user turn."""
    if system_turn:
        return [
            {"role": "system", "content": system_text},
            {"role": "user", "content": prompt},
        ]
    return [{"role": "user", "content": f"{system_text} {prompt}"}]


def has_chat_template(tokenizer: ChatTokenizer) -> bool:
    """True when the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_format(tokenizer: ChatTokenizer) -> str:
    """How `render_text` gives prompts to this tokenizer's model: `"chat-template"`, or
    `"plain"` text when the tokenizer has no chat template (the fallback above)."""
    return CHAT_TEMPLATE_FORMAT if has_chat_template(tokenizer) else PLAIN_FORMAT


def check_system_turn(tokenizer: ChatTokenizer, model_name: str) -> None:
    """Raise `PromptError` when the model's template cannot hold a system turn."""
    if not has_chat_template(tokenizer):
        return
    marker = "cvgen-system-probe"
    try:
        text = tokenizer.apply_chat_template(
            build_conversation(marker, "hi", system_turn=True),
            add_generation_prompt=True,
            tokenize=False,
        )
    except Exception as exc:  # templates raise arbitrary errors (jinja raise_exception)
        raise PromptError(
            f"{model_name}: the chat template rejects a system turn ({exc}); drop --system-message"
        ) from None
    if marker not in text:
        raise PromptError(
            f"{model_name}: the chat template drops the system turn; drop --system-message"
        )


def render_text(
    tokenizer: ChatTokenizer, system_text: str, prompt: str, *, system_turn: bool
) -> str:
    """The prompt string for one text, chat template applied with the generation prompt."""
    if not has_chat_template(tokenizer):
        joiner = "\n\n" if system_turn else " "
        return f"{system_text}{joiner}{prompt}\n"
    rendered = tokenizer.apply_chat_template(
        build_conversation(system_text, prompt, system_turn=system_turn),
        add_generation_prompt=True,
        tokenize=False,
    )
    return str(rendered)


def tokenize_texts(tokenizer: ChatTokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered texts. A chat template already holds the special tokens, so none
    are added then; the plain fallback adds the tokenizer's own (e.g. BOS)."""
    add_special = not has_chat_template(tokenizer)
    encoded = tokenizer(list(texts), add_special_tokens=add_special)
    return [list(map(int, ids)) for ids in encoded["input_ids"]]
