"""The conversation loop of `cvgen chat`: one model, a pack's control vectors changed between
turns by commands, and the reply streamed as it is made.

A line is a user turn: the whole conversation (the system message, then the user and
assistant turns so far, then this line) becomes one prompt (`PromptMaker.chat_tokens`), which
`Generator.generate` runs under the current selection's vectors; the reply is printed piece
by piece and joins the conversation. A line that starts with "/" is a command (`/help` lists
them; "//" sends a line that starts with "/"). A turn that fails (the conversation no longer
fits the context, a template that refuses it) or that Ctrl-C stops is left out of the
conversation, so the next line starts from the last whole turn.

`ChatSession` reads lines from a function (`input` by default) and writes to a text stream,
so it runs as well under a terminal as over strings in a test, with any generator that has
`generate(job, emit)` and `ctx_size`.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from cvgen.common.errors import CvgenError
from cvgen.pack.steering import PackSteering, Selection, SteeringError
from cvgen.serve.generation import Finished, Job, Sampling

PROMPT = "> "
HELP = """\
commands:
  /set AXIS=SCALE [AXIS=SCALE ...]  change those axes, keep the others (0: debias only)
  /set AXIS=off                     stop steering that axis
  /preset NAME                      replace the steering with a preset (/preset: list them)
  /show                             the steering and the number of turns
  /clear                            start a new conversation (the steering stays)
  /help                             this text
  /quit                             leave (also Ctrl-D; Ctrl-C stops a reply)
a line starting with // is sent as a message starting with /"""


class ChatGenerator(Protocol):
    """What the session needs of `cvgen.serve.generation.Generator`."""

    ctx_size: int

    def generate(self, job: Job, emit: Callable[[str], None] | None = None) -> Finished: ...


class ChatPrompts(Protocol):
    """What the session needs of `cvgen.serve.prompts.PromptMaker`."""

    def chat_tokens(self, messages: Sequence[Any]) -> list[int]: ...


@dataclass(frozen=True)
class ChatSettings:
    """Each reply's token limit and sampling, and the optional system message."""

    max_tokens: int = 256
    sampling: Sampling = field(default_factory=Sampling)
    system: str | None = None


class ChatSession:
    """One conversation under a changing selection (see the module docstring)."""

    def __init__(
        self,
        steering: PackSteering,
        generator: ChatGenerator,
        prompts: ChatPrompts,
        settings: ChatSettings,
        *,
        selection: Selection = (),
        out: TextIO | None = None,
    ):
        self.steering = steering
        self.generator = generator
        self.prompts = prompts
        self.settings = settings
        self.selection = selection
        self.out = out if out is not None else sys.stdout
        self.history: list[dict[str, str]] = []

    # --- the loop ----------------------------------------------------------------------------

    def run(self, read_line: Callable[[str], str] = input) -> None:
        """Read lines with `read_line(PROMPT)` until /quit, end of input or Ctrl-C at the
        prompt."""
        while True:
            try:
                line = read_line(PROMPT)
            except (EOFError, KeyboardInterrupt):
                self.say("")
                return
            if not self.handle(line):
                return

    def handle(self, line: str) -> bool:
        """Act on one line; False when it asks to leave."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("//"):
            self.turn(text[1:])
            return True
        if text.startswith("/"):
            return self.command(text)
        self.turn(text)
        return True

    def say(self, text: str) -> None:
        """Write one line and flush it."""
        self.out.write(text + "\n")
        self.out.flush()

    # --- commands ----------------------------------------------------------------------------

    def command(self, text: str) -> bool:
        """Run one /command; False for /quit."""
        name, *words = text.split()
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/show":
            self.say(self.description())
        elif name == "/clear":
            self.history.clear()
            self.say("the conversation is cleared; " + self.steering_text())
        elif name in ("/set", "/preset"):
            try:
                self.selection = (
                    self.changed(words) if name == "/set" else self.preset_selection(words)
                )
            except SteeringError as exc:
                self.say(f"{name}: {_reason(exc)}")
            else:
                self.say(self.steering_text())
        else:
            self.say(f"unknown command {name}; /help lists the commands")
        return True

    def changed(self, words: Sequence[str]) -> Selection:
        """The selection after `/set WORDS`: each AXIS=SCALE replaces that axis's scale (or
        adds the axis, last), AXIS=off removes it. One bad word changes nothing."""
        if not words:
            raise SteeringError("/set", "give AXIS=SCALE (or AXIS=off); " + self.axes_text())
        pairs = dict(self.selection)
        for word in words:
            axis, _, value = word.partition("=")
            if value.strip().lower() == "off":
                if axis not in self.steering.axes:
                    raise SteeringError("/set", f"unknown axis '{axis}'; " + self.axes_text())
                pairs.pop(axis, None)
                continue
            ((axis, rounded),) = self.steering.parse_assignments((word,), None)
            pairs.pop(axis, None)
            pairs[axis] = rounded
        return tuple(pairs.items())

    def preset_selection(self, words: Sequence[str]) -> Selection:
        """The selection of `/preset NAME`."""
        presets = self.steering.manifest.presets or {}
        if len(words) != 1:
            known = ", ".join(presets) if presets else "none"
            raise SteeringError("/preset", f"give one preset name; the pack's presets: {known}")
        return self.steering.parse_assignments((), words[0])

    def steering_text(self) -> str:
        """The selection as `axis=scale` pairs, or "no steering"."""
        if not self.selection:
            return "no steering"
        return "steering: " + " ".join(f"{axis}={scale}" for axis, scale in self.selection)

    def description(self) -> str:
        """What /show prints: the steering and the number of turns."""
        turns = sum(1 for message in self.history if message["role"] == "user")
        return f"{self.steering_text()} ({turns} turn{'' if turns == 1 else 's'})"

    def axes_text(self) -> str:
        """The pack's axes, for error messages."""
        return "the pack's axes: " + ", ".join(self.steering.axes)

    # --- turns -------------------------------------------------------------------------------

    def messages(self, user_text: str) -> list[dict[str, str]]:
        """The conversation with `user_text` as the next user turn."""
        system = self.settings.system
        start = [{"role": "system", "content": system}] if system else []
        return [*start, *self.history, {"role": "user", "content": user_text}]

    def turn(self, user_text: str) -> Finished | None:
        """Reply to `user_text`, streaming it; the finished reply, or None when the turn was
        refused or stopped (then it is not kept)."""
        messages = self.messages(user_text)
        try:
            prompt = self.prompts.chat_tokens(messages)
        except CvgenError as exc:
            self.say(" ".join(str(exc).split()))
            return None
        ctx_size = self.generator.ctx_size
        if len(prompt) >= ctx_size:
            self.say(
                f"the conversation is {len(prompt)} tokens and no longer fits the context of "
                f"{ctx_size} (--ctx-size); /clear starts a new one"
            )
            return None
        job = Job(
            prompt=prompt,
            vectors=self.steering.block_vectors(self.selection),
            max_tokens=self.settings.max_tokens,
            sampling=self.settings.sampling,
        )
        finished = self._generate(job)
        if finished is None or finished.finish_reason == "cancelled":
            self.say("\n[stopped; this turn is left out of the conversation]")
            return None
        self.say("")
        self.history += [messages[-1], {"role": "assistant", "content": finished.text}]
        if finished.prompt_tokens + finished.completion_tokens >= ctx_size:
            self.say("[the context is full; /clear starts a new conversation]")
        return finished

    def _generate(self, job: Job) -> Finished | None:
        """`job` run with its text streamed; Ctrl-C sets its `cancelled` flag (None when the
        interrupt came before the flag could be used)."""

        def emit(piece: str) -> None:
            self.out.write(piece)
            self.out.flush()

        try:
            with _interrupt_cancels(job):
                return self.generator.generate(job, emit)
        except KeyboardInterrupt:
            job.cancelled.set()
            return None
        except CvgenError as exc:
            self.say("\n" + " ".join(str(exc).split()))
            return None


@contextmanager
def _interrupt_cancels(job: Job) -> Iterator[None]:
    """While it is open, SIGINT (Ctrl-C) sets `job.cancelled` instead of raising
    KeyboardInterrupt, so the generator stops before its next token with its context intact.
    Only the main thread can set a signal handler; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum: int, frame: object) -> None:
        job.cancelled.set()

    previous = signal.signal(signal.SIGINT, cancel)
    try:
        yield
    finally:
        signal.signal(
            signal.SIGINT, previous if previous is not None else signal.default_int_handler
        )


def _reason(exc: SteeringError) -> str:
    """A steering error's message without the field it names (the command is named instead)."""
    return str(exc).removeprefix(f"{exc.field}: ")


def enable_line_editing() -> None:
    """Line editing and history for `input` when the standard input is a terminal, and Ctrl-C
    as KeyboardInterrupt there even when the chat was started with SIGINT ignored (as a
    background job's children are)."""
    if sys.stdin.isatty():
        with suppress(ImportError):  # not on every platform
            import readline  # noqa: F401  (importing it is what enables it)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)
