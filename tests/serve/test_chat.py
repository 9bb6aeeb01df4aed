"""`cvgen chat`: the conversation loop over strings with a fake generator (commands, turns,
Ctrl-C, a full context), the command's checks before any model loads, and the real command
under a pseudo-terminal on SmolLM2, whose replies must be the in-process Generator's."""

from __future__ import annotations

import importlib
import io
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import require_binding, require_real_model
from serve_pack import write_serve_pack

from cvgen.cli import main
from cvgen.pack.steering import PackSteering
from cvgen.serve.chat import HELP, ChatSession, ChatSettings
from cvgen.serve.generation import Finished, Job, Sampling

REPO = Path(__file__).resolve().parents[2]
QUESTION = "Describe the sea in one sentence."


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chat")
    return write_serve_pack(folder / "pack", folder / "no-model.gguf")


class FakePrompts:
    """Each conversation's messages recorded; its tokens: one per message, or `length`."""

    def __init__(self, length: int | None = None):
        self.seen: list[list[dict[str, str]]] = []
        self.length = length

    def chat_tokens(self, messages: Sequence[Any]) -> list[int]:
        self.seen.append([dict(message) for message in messages])
        return [1] * (self.length or len(messages))


class FakeGenerator:
    """Replies "reply N" in two pieces; `during` runs between them (e.g. a Ctrl-C)."""

    def __init__(self, ctx_size: int = 100, during: Callable[[Job], None] | None = None):
        self.ctx_size = ctx_size
        self.jobs: list[Job] = []
        self.during = during

    def generate(self, job: Job, emit: Callable[[str], None] | None = None) -> Finished:
        self.jobs.append(job)
        assert emit is not None
        emit("reply ")
        if self.during is not None:
            self.during(job)
        if job.cancelled.is_set():
            return Finished("reply ", "cancelled", len(job.prompt), 1)
        emit(str(len(self.jobs)))
        return Finished(f"reply {len(self.jobs)}", "stop", len(job.prompt), 2)


def session_of(
    pack: Path,
    generator: FakeGenerator | None = None,
    prompts: FakePrompts | None = None,
    *,
    start: tuple[str, ...] = (),
    system: str | None = None,
) -> tuple[ChatSession, io.StringIO]:
    steering = PackSteering(pack)
    out = io.StringIO()
    settings = ChatSettings(max_tokens=7, sampling=Sampling(temperature=0), system=system)
    session = ChatSession(
        steering,
        generator or FakeGenerator(),
        prompts or FakePrompts(),
        settings,
        selection=steering.parse_assignments(start, None),
        out=out,
    )
    return session, out


def lines_of(*lines: str) -> Callable[[str], str]:
    queue = iter(lines)

    def read_line(prompt: str) -> str:
        assert prompt == "> "
        try:
            return next(queue)
        except StopIteration:
            raise EOFError from None

    return read_line


def said(out: io.StringIO) -> list[str]:
    """The lines written since the last call."""
    text = out.getvalue()
    out.seek(0)
    out.truncate()
    return text.splitlines()


def test_set_changes_the_named_axes_only_and_off_removes_one(pack: Path) -> None:
    session, out = session_of(pack, start=("mood=0.5",))
    assert session.handle("/set language=1")
    assert session.selection == (("mood", "0.5"), ("language", "1"))
    assert said(out) == ["steering: mood=0.5 language=1"]
    session.handle("/set mood=0 language=-0.333")
    assert session.selection == (("mood", "0"), ("language", "-0.33"))
    session.handle("/set mood=OFF")
    assert session.selection == (("language", "-0.33"),)
    session.handle("/set language=off")
    assert session.selection == ()
    said(out)
    session.handle("/show")
    assert said(out) == ["no steering (0 turns)"]
    session.handle("/preset vivid")
    assert session.selection == (("language", "0.8"), ("mood", "-0.5"))
    assert said(out) == ["steering: language=0.8 mood=-0.5"]
    session.handle("/help")
    assert said(out) == HELP.splitlines()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/set language=3", "/set: scale 3 of axis 'language' is beyond its safe positive scale"),
        ("/set mood=-1.51", "/set: scale -1.51 of axis 'mood' is beyond its safe negative"),
        ("/set language=loud", "/set: scale 'loud' for axis 'language' is not a number"),
        ("/set language", "/set: expected AXIS=SCALE, got 'language' (no '=')"),
        ("/set tone=1", "/set: unknown axis 'tone'; the pack has: language, mood"),
        ("/set mood=1 tone=off", "/set: unknown axis 'tone'; the pack's axes: language, mood"),
        ("/set", "/set: give AXIS=SCALE (or AXIS=off); the pack's axes: language, mood"),
        ("/preset calm", "/preset: unknown preset 'calm'; the pack has: vivid"),
        ("/preset", "/preset: give one preset name; the pack's presets: vivid"),
        ("/louder", "unknown command /louder; /help lists the commands"),
    ],
)
def test_a_bad_command_says_why_in_one_line_and_changes_nothing(
    pack: Path, line: str, message: str
) -> None:
    session, out = session_of(pack, start=("language=0.5",))
    assert session.handle(line) is True
    written = said(out)
    assert len(written) == 1 and written[0].startswith(message), written
    assert session.selection == (("language", "0.5"),)


def test_each_turn_sends_the_conversation_under_the_current_vectors(pack: Path) -> None:
    generator, prompts = FakeGenerator(), FakePrompts()
    session, out = session_of(pack, generator, prompts, system="Be brief.")
    session.run(
        lines_of("hi", "/set language=1", "", "again", "/show", "//slash", "/clear", "third")
    )
    steered = session.steering.block_vectors((("language", "1"),))
    assert [len(job.vectors) for job in generator.jobs] == [0, 13, 13, 13]
    for block, vector in steered.items():
        np.testing.assert_array_equal(generator.jobs[1].vectors[block], vector)
    assert all(job.max_tokens == 7 and job.sampling.temperature == 0 for job in generator.jobs)
    system = {"role": "system", "content": "Be brief."}
    assert prompts.seen[1] == [
        system,
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "reply 1"},
        {"role": "user", "content": "again"},
    ]
    assert prompts.seen[2][-1] == {"role": "user", "content": "/slash"}
    assert prompts.seen[3] == [system, {"role": "user", "content": "third"}]
    assert said(out) == [
        "reply 1",
        "steering: language=1",
        "reply 2",
        "steering: language=1 (2 turns)",
        "reply 3",
        "the conversation is cleared; steering: language=1",
        "reply 4",
        "",  # the end of input
    ]
    assert len(session.history) == 2


def test_quit_leaves_and_ctrl_c_at_the_prompt_leaves(pack: Path) -> None:
    generator = FakeGenerator()
    session, _ = session_of(pack, generator)
    session.run(lines_of("/quit", "never sent"))
    session.run(lines_of("/exit", "never sent"))

    def interrupted(prompt: str) -> str:
        raise KeyboardInterrupt

    session.run(interrupted)
    assert generator.jobs == []


def test_a_conversation_beyond_the_context_is_refused_and_not_kept(pack: Path) -> None:
    generator = FakeGenerator(ctx_size=50)
    session, out = session_of(pack, generator, FakePrompts(length=50))
    session.handle("a long question")
    assert generator.jobs == [] and session.history == []
    assert said(out) == [
        "the conversation is 50 tokens and no longer fits the context of 50 (--ctx-size); "
        "/clear starts a new one"
    ]


def test_ctrl_c_during_a_reply_stops_it_and_leaves_the_turn_out(pack: Path) -> None:
    flags_seen = []

    def interrupt(job: Job) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # handled before os.kill returns to Python code
        flags_seen.append(job.cancelled.is_set())  # not reached if it raised KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT)
    generator = FakeGenerator(during=interrupt)
    session, out = session_of(pack, generator)
    assert session.turn("hello") is None
    assert flags_seen == [True]
    assert signal.getsignal(signal.SIGINT) is before
    assert said(out) == ["reply ", "[stopped; this turn is left out of the conversation]"]
    assert session.history == []
    generator.during = None
    finished = session.turn("hello again")
    assert finished is not None and finished.text == "reply 2"
    assert session.history[0] == {"role": "user", "content": "hello again"}


def test_the_command_checks_everything_before_the_model_loads(
    pack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    # the module, not the command of the same name that cvgen.cli exports
    monkeypatch.setattr(importlib.import_module("cvgen.cli.chat"), "open_model", no_load)
    model = tmp_path / "m.gguf"
    cases = [
        (
            [str(pack), "--set", "tone=1"],
            "--set: unknown axis 'tone'; the pack has: language, mood",
        ),
        ([str(pack), "--set", "mood=2"], "--set: scale 2 of axis 'mood' is beyond its safe"),
        ([str(pack), "--preset", "calm"], "--preset: unknown preset 'calm'"),
        ([str(tmp_path)], f"{tmp_path}: not a cvgen pack (no pack.json)"),
        ([str(pack)], "--model: the pack's source "),
        ([str(pack), "--model", str(model)], f"--model: {model} is not a file"),
        ([str(pack), "--max-tokens", "0"], "Invalid value for '--max-tokens': 0 is not in"),
    ]
    for arguments, message in cases:
        result = CliRunner().invoke(main, ["chat", *arguments])
        assert result.exit_code != 0, arguments
        assert f"Error: {message}" in result.output, result.output


# --- the real command under a pseudo-terminal ----------------------------------------------


def in_process_replies(pack: Path, model: Path, selections: Sequence[str]) -> list[str]:
    """The greedy 24-token reply to QUESTION under each `AXIS=SCALE` selection."""
    from cvgen.engine.model import open_model
    from cvgen.serve.generation import Generator
    from cvgen.serve.prompts import PromptMaker

    steering = PackSteering(pack)
    replies = []
    with open_model(model) as loaded:
        generator = Generator(loaded, ctx_size=1024, threads=1)
        try:
            prompt = PromptMaker(loaded).chat_tokens([{"role": "user", "content": QUESTION}])
            for assignment in selections:
                vectors = steering.block_vectors(steering.parse_assignments((assignment,), None))
                job = Job(prompt, vectors, 24, sampling=Sampling(temperature=0))
                replies.append(generator.generate(job).text)
        finally:
            generator.close()
    return replies


_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def spawn() -> Iterator[Callable[..., Any]]:
    import pexpect

    children: list[Any] = []

    def start(arguments: list[str]) -> Any:
        env = dict(os.environ, PYTHONPATH=str(REPO), TERM="dumb")
        child = pexpect.spawn(
            sys.executable, arguments, env=env, encoding="utf-8", timeout=60, dimensions=(50, 400)
        )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.isalive():
            os.kill(child.pid, signal.SIGKILL)
            child.wait()


def ask(child: Any, line: str) -> str:
    """Send `line`; what the chat printed before its next prompt, as plain text."""
    child.sendline(line)
    child.expect_exact(line)  # the terminal's echo
    child.expect_exact("\r\n> ")
    text = _ESCAPES.sub("", child.before).replace("\r\n", "\n")
    assert text.startswith("\n"), repr(text)
    return text[1:]


@pytest.mark.slow
@pytest.mark.llamacpp
def test_chat_under_a_terminal_replies_as_the_generator_does(
    tmp_path: Path, spawn: Callable[..., Any]
) -> None:
    import pexpect

    require_binding()
    model = require_real_model()
    pack = write_serve_pack(tmp_path / "pack", model)
    ornate, simple = in_process_replies(pack, model, ["language=1", "language=-1"])
    assert ornate != simple

    child = spawn(
        ["-m", "cvgen.cli", "chat", str(pack), "--model", str(model), "--temperature", "0"]
        + ["--max-tokens", "24", "--threads", "1", "--ctx-size", "1024"]
    )
    child.expect_exact("/quit leaves.")
    child.expect_exact("\r\n> ")
    assert ask(child, "/set language=1") == "steering: language=1"
    assert ask(child, QUESTION) == ornate
    assert ask(child, "/show") == "steering: language=1 (1 turn)"
    assert ask(child, "/clear") == "the conversation is cleared; steering: language=1"
    assert ask(child, "/set language=-1") == "steering: language=-1"
    assert ask(child, QUESTION) == simple
    assert ask(child, "/show") == "steering: language=-1 (1 turn)"
    child.sendintr()  # Ctrl-C at the prompt leaves cleanly
    child.expect(pexpect.EOF)
    child.wait()
    assert child.exitstatus == 0, child.before
