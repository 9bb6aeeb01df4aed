"""Chat formatting: turn a (system text, writing prompt) pair into the model's prompt tokens.

By default the system text and the writing prompt are merged into ONE user turn,
`"{system text} {prompt}"`. With `system_turn=True` the system text becomes a real system turn
followed by a user turn holding the prompt. The model's own chat template is applied with the
generation prompt added, so the last token is the end of the assistant header: the position
whose hidden state is read.

Fallback for a model without a chat template (documented in docs/usage.md): plain text
`"{system text} {prompt}\n"` (or `"{system text}\n\n{prompt}\n"` with a system turn),
tokenised with the tokenizer's own special tokens (e.g. BOS) added. `prompt_format` names which
of the two a tokenizer gets; a pack records it in `pack.json` as `prompt_format`.

`render_chat_prompt` is the one renderer of a template's text that `cvgen eval`'s two backends
and `cvgen compare` share: the transformers backend gives it the tokenizer's template
(`template_of_tokenizer`), the llama.cpp backend the model GGUF's (`template_of_model_file`), so
the two cannot disagree on a prompt. It renders as transformers' `apply_chat_template` does (a
sandboxed Jinja environment with trim_blocks, lstrip_blocks, loop controls, `raise_exception`,
`tojson` and `strftime_now`).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from cvgen.common.errors import CvgenError

if TYPE_CHECKING:
    from jinja2 import Template

    from cvgen.vectors.model_header import ModelFileInfo

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


# --- one renderer of a template's text ---------------------------------------------------------


@dataclass(frozen=True)
class ChatTemplate:
    """A model's chat template: its Jinja text (None: the model has none) and the special
    tokens a template may name; `origin` (a file or model name) is named in errors."""

    text: str | None
    bos_token: str = ""
    eos_token: str = ""
    origin: str = "model"


def template_of_tokenizer(tokenizer: Any, origin: str = "model") -> ChatTemplate:
    """The chat template a Hugging Face tokenizer carries, with its BOS and EOS texts."""
    text = getattr(tokenizer, "chat_template", None)
    if isinstance(text, dict):  # named templates: the default one renders plain chats
        text = text.get("default")
    return ChatTemplate(
        text=text if isinstance(text, str) and text else None,
        bos_token=str(getattr(tokenizer, "bos_token", None) or ""),
        eos_token=str(getattr(tokenizer, "eos_token", None) or ""),
        origin=origin,
    )


def template_of_model_file(info: ModelFileInfo) -> ChatTemplate:
    """The chat template of a llama.cpp model GGUF (from its header), with its BOS and EOS."""
    return ChatTemplate(
        text=info.chat_template or None,
        bos_token=info.bos_token or "",
        eos_token=info.eos_token or "",
        origin=str(info.path),
    )


def render_chat_prompt(template: ChatTemplate, user_text: str) -> str:
    """`user_text` as one user turn, ready for the assistant's reply: the chat template
    rendered with the generation prompt, or the plain fallback `"{user_text}\n"` (as
    `render_text` gives) when the model has no template."""
    if template.text is None:
        return f"{user_text}\n"
    return render_messages(template, [{"role": "user", "content": user_text}])


def render_messages(template: ChatTemplate, messages: Sequence[dict[str, str]]) -> str:
    """The text of `messages` (role/content dicts) in `template`, with the generation prompt
    added. A template that raises (`raise_exception`, a Jinja error) gives a `PromptError`
    naming the template's origin."""
    if template.text is None:
        raise PromptError(f"{template.origin}: the model has no chat template")
    from jinja2 import TemplateError

    try:
        rendered = _compiled(template.text).render(
            messages=list(messages),
            add_generation_prompt=True,
            bos_token=template.bos_token,
            eos_token=template.eos_token,
        )
    except TemplateError as exc:
        raise PromptError(f"{template.origin}: chat template: {exc}") from None
    return str(rendered)


@lru_cache(maxsize=8)
def _compiled(text: str) -> Template:
    """`text` compiled once in a sandbox that offers what Hub chat templates use."""
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(
        value: Any, ensure_ascii: bool = False, indent: int | None = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)

    def strftime_now(pattern: str) -> str:
        return datetime.datetime.now().strftime(pattern)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    return environment.from_string(text)
