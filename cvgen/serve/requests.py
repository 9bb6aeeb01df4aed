"""What a request may ask, checked before it reaches the queue: OpenAI's chat and completion
bodies plus cvgen's `control_vectors` and `preset`, as pydantic models, and the `Job` each
becomes.

Numbers are strict: a scale, temperature or `max_tokens` given as a string, a boolean, NaN or
infinity (Python's JSON reader takes `NaN` and turns `1e309` into infinity) is refused with the
field's name, never coerced. Fields OpenAI clients send that change nothing here (`user`,
`metadata`, ...) are accepted and ignored; fields that would change the answer and are not
supported (`n` > 1, `logprobs`, `tools`, `echo`, `suffix`, ...) are refused, so no request
silently gets less than it asked for.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from cvgen.common.errors import CvgenError
from cvgen.pack.steering import Selection
from cvgen.serve.generation import Job, Sampling
from cvgen.serve.prompts import PromptFieldError
from cvgen.serve.service import Service

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 256


class RequestFieldError(CvgenError, ValueError):
    """A request field the server refuses; `field` names it (400)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class CommonRequest(BaseModel):
    """The fields chat and completion requests share."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    max_tokens: StrictInt | None = None
    temperature: Number | None = Field(default=None, ge=0, le=5)
    top_p: Number | None = Field(default=None, gt=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=0, le=1000)
    min_p: Number | None = Field(default=None, ge=0, le=1)
    seed: StrictInt | None = None
    presence_penalty: Number | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: Number | None = Field(default=None, ge=-2, le=2)
    repeat_penalty: Number | None = Field(default=None, gt=0, le=5)
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = None
    control_vectors: Any = None
    preset: Any = None


class ChatRequest(CommonRequest):
    messages: Any = None
    max_completion_tokens: StrictInt | None = None


class CompletionRequest(CommonRequest):
    prompt: Any = None


_REFUSED = {
    "logprobs": "log-probabilities are not returned by this server",
    "top_logprobs": "log-probabilities are not returned by this server",
    "tools": "tool calls are not supported",
    "tool_choice": "tool calls are not supported",
    "functions": "function calls are not supported",
    "response_format": "structured output is not supported",
    "logit_bias": "logit bias is not supported",
    "echo": "echoing the prompt is not supported",
    "suffix": "suffixes (fill-in-the-middle) are not supported",
    "best_of": "best_of is not supported",
}
_HARMLESS = {"response_format": {"type": "text"}, "tool_choice": "none"}  # what is done anyway
_IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "cache_prompt"}


def check_extras(request: CommonRequest) -> None:
    """Refuse a supported-nowhere field that would change the answer (see the docstring)."""
    for name, value in (request.model_extra or {}).items():
        if name in _IGNORED or value in (None, False, 0, [], {}) or _HARMLESS.get(name) == value:
            continue
        reason = _REFUSED.get(name)
        raise RequestFieldError(name, reason or "is not a field this server knows")
    if request.n not in (None, 1):
        raise RequestFieldError("n", f"{request.n}: this server makes one choice a request")


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    texts = [stop] if isinstance(stop, str) else list(stop or [])
    if len(texts) > MAX_STOP_STRINGS:
        raise RequestFieldError("stop", f"{len(texts)} strings; at most {MAX_STOP_STRINGS}")
    for text in texts:
        if len(text) > MAX_STOP_LENGTH:
            raise RequestFieldError("stop", f"a string of {len(text)} characters; at most 256")
    return tuple(texts)


def sampling_of(request: CommonRequest) -> Sampling:
    """The request's sampling, llama-server's defaults for what it leaves out."""
    defaults = Sampling()
    return Sampling(
        temperature=_or(request.temperature, defaults.temperature),
        top_k=_or(request.top_k, defaults.top_k),
        top_p=_or(request.top_p, defaults.top_p),
        min_p=_or(request.min_p, defaults.min_p),
        seed=request.seed,
        repeat_penalty=_or(request.repeat_penalty, defaults.repeat_penalty),
        frequency_penalty=_or(request.frequency_penalty, defaults.frequency_penalty),
        presence_penalty=_or(request.presence_penalty, defaults.presence_penalty),
    )


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def make_job(
    service: Service, request: CommonRequest, prompt: list[int], max_tokens: int | None
) -> tuple[Job, Selection]:
    """The job of a checked request and the selection it runs under. `max_tokens` absent:
    the server's bound; never more than the context leaves after the prompt."""
    check_extras(request)
    settings = service.settings
    field = "max_completion_tokens" if isinstance(request, ChatRequest) else "max_tokens"
    if isinstance(request, ChatRequest) and request.max_completion_tokens is None:
        field = "max_tokens"
    if max_tokens is not None and not 1 <= max_tokens <= settings.max_tokens:
        raise RequestFieldError(
            field, f"{max_tokens} is outside 1..{settings.max_tokens} (the server's --max-tokens)"
        )
    prompt_field = "messages" if isinstance(request, ChatRequest) else "prompt"
    if len(prompt) >= settings.ctx_size:
        raise RequestFieldError(
            prompt_field,
            f"the prompt is {len(prompt)} tokens; the context holds {settings.ctx_size} "
            "(--ctx-size), with room for at least one more",
        )
    selection = service.steering.select(
        request.control_vectors, request.preset, default=service.default
    )
    limit = min(max_tokens or settings.max_tokens, settings.ctx_size - len(prompt))
    job = Job(
        prompt=prompt,
        vectors=service.steering.block_vectors(selection),
        max_tokens=limit,
        sampling=sampling_of(request),
        stop=stop_strings(request.stop),
    )
    return job, selection


def chat_prompt(service: Service, request: ChatRequest) -> list[int]:
    if request.messages is None:
        raise PromptFieldError("messages", "is required")
    return service.prompts.chat_tokens(request.messages)


def completion_prompt(service: Service, request: CompletionRequest) -> list[int]:
    if request.prompt is None:
        raise PromptFieldError("prompt", "is required")
    return service.prompts.completion_tokens(request.prompt)
