"""`cvgen serve` as a user runs it: a real server process on 127.0.0.1 with the real SmolLM2
GGUF, driven over HTTP and through the official `openai` client. The reference for every text
is the real consumer: a fresh `llama-server` started with the pack's vectors as flags (the line
`cvgen commands` prints), asked the same request at temperature 0.

One server serves the whole module (stopped by its PID at the end); every request is bounded
in time. The references cost one llama-server start per setting.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binding, require_llama_cpp, require_real_model
from serve_pack import write_serve_pack

from cvgen.llamacpp.binaries import LlamaServer, free_port
from cvgen.llamacpp.commands import vector_arguments
from cvgen.pack.manifest import load_manifest

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]
THREADS = os.environ.get("CVGEN_TEST_THREADS", "2")
KEY = "test-key-15"
TOKENS = 24
LOAD_TOKENS = 8  # the load test's requests: 64 of them, so short
CTX = 1024
PROMPTS = (
    "Describe a harbour town in two sentences.",
    "Tell me about your favourite season.",
)
COMPLETION_PROMPT = "The old lighthouse keeper opened the door and"
PENALISED = {
    "messages": [{"role": "user", "content": "Describe a harbour town in two sentences."}],
    "temperature": 0,
    "max_tokens": 24,
    "repeat_penalty": 1.5,
    "frequency_penalty": 0.5,
    "presence_penalty": 0.4,
}
# (label, request fields): the settings requests are drawn from
SETTINGS: dict[str, dict[str, Any]] = {
    "plain": {"control_vectors": {}},
    "ornate": {"control_vectors": {"language": 1}},
    "simple": {"control_vectors": {"language": -1}},
    "mixed": {"control_vectors": {"mood": 0.7, "language": -0.4}},
    "vivid": {"preset": "vivid"},
}
# the same settings as `cvgen commands --set` pairs, for the reference llama-server
SELECTIONS = {
    "plain": [],
    "ornate": [("language", 1.0)],
    "simple": [("language", -1.0)],
    "mixed": [("mood", 0.7), ("language", -0.4)],
    "vivid": [("language", 0.8), ("mood", -0.5)],
}


@pytest.fixture(scope="module")
def model() -> Path:
    require_binding()
    require_llama_cpp()
    return require_real_model()


@pytest.fixture(scope="module")
def pack(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_serve_pack(tmp_path_factory.mktemp("serve") / "pack", model)


class Served:
    """A `cvgen serve` process and how to talk to it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path):
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def call(
        self,
        path: str,
        body: Any = None,
        *,
        key: str | None = KEY,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> tuple[int, Any]:
        """(status, parsed JSON or text) of one request."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers or {})
        if key is not None:
            request.add_header("Authorization", f"Bearer {key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                status, text = reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def chat(
        self, prompt: str, setting: str, tokens: int = TOKENS, **extra: Any
    ) -> tuple[int, Any]:
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": tokens,
            **SETTINGS[setting],
            **extra,
        }
        return self.call("/v1/chat/completions", body)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1])


@pytest.fixture(scope="module")
def served(pack: Path, model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    command = [
        sys.executable, "-m", "cvgen.cli", "serve", str(pack), "--model", str(model),
        "--port", str(port), "--threads", THREADS, "--api-key", KEY, "--ctx-size", str(CTX),
        "--max-tokens", "64", "--max-body-bytes", "65536",
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    server = Served(process, port, log)
    try:
        deadline = time.monotonic() + 90
        while not _healthy(server):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"cvgen serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _healthy(server: Served) -> bool:
    try:
        return server.call("/health", timeout=2)[0] == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def references(pack: Path, model: Path) -> dict[tuple[str, str], str]:
    """(setting, prompt) -> a fresh llama-server's greedy reply of TOKENS tokens with the
    setting's flags, for every setting and prompt ((setting, prompt + "/short"): LOAD_TOKENS
    tokens), plus ("ornate"|"plain", COMPLETION_PROMPT) for /v1/completions."""
    manifest = load_manifest(pack).to_json()
    out = {}
    for label, selection in SELECTIONS.items():
        vectors = vector_arguments(manifest, selection, vector_dir=str(pack))
        with LlamaServer(model, vectors=vectors, threads=int(THREADS)) as server:
            for prompt in PROMPTS:
                for tokens in (TOKENS, LOAD_TOKENS):
                    reply = server.post(
                        "/v1/chat/completions",
                        {
                            "messages": [{"role": "user", "content": prompt}],
                            "temperature": 0,
                            "max_tokens": tokens,
                            "cache_prompt": False,
                        },
                    )
                    key = (label, prompt) if tokens == TOKENS else (label, f"{prompt}/short")
                    out[key] = reply["choices"][0]["message"]["content"]
            if label == "ornate":  # a penalised greedy reply: llama-server's chain at temperature 0
                reply = server.post("/v1/chat/completions", {**PENALISED, "cache_prompt": False})
                out[label, "penalised"] = reply["choices"][0]["message"]["content"]
            if label in ("ornate", "plain"):
                reply = server.post(
                    "/v1/completions",
                    {"prompt": COMPLETION_PROMPT, "temperature": 0, "max_tokens": TOKENS,
                     "cache_prompt": False},
                )  # fmt: skip
                out[label, COMPLETION_PROMPT] = reply["choices"][0]["text"]
    return out


def test_the_references_differ_by_setting(references: dict[tuple[str, str], str]) -> None:
    """Otherwise equality with them would prove nothing about the vectors."""
    for prompt in PROMPTS:
        texts = [references[label, prompt] for label in SETTINGS]
        assert len(set(texts)) == len(texts), texts
        assert all(len(text) > 20 for text in texts)


def test_openai_client_chat_completion_and_streaming_equal_llama_server(
    served: Served, references: dict[tuple[str, str], str]
) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=KEY, timeout=120, max_retries=0)
    prompt = PROMPTS[0]
    messages = [{"role": "user", "content": prompt}]
    for label, scale in (("ornate", 1), ("simple", -1)):
        reply = client.chat.completions.create(
            model="smollm2", messages=messages, temperature=0, max_tokens=TOKENS,  # type: ignore[arg-type]
            extra_body={"control_vectors": {"language": scale}},
        )  # fmt: skip
        assert reply.choices[0].message.content == references[label, prompt], label
    stream = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=TOKENS, stream=True,  # type: ignore[arg-type]
        extra_body={"preset": "vivid"},
    )  # fmt: skip
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([piece for piece in pieces if piece]) > 5  # streamed, not one block
    assert "".join(pieces) == references["vivid", prompt]
    for label, body in (("ornate", {"control_vectors": {"language": 1}}), ("plain", {})):
        completion = client.completions.create(
            model="smollm2", prompt=COMPLETION_PROMPT, temperature=0, max_tokens=TOKENS,
            extra_body=body,
        )  # fmt: skip
        assert completion.choices[0].text == references[label, COMPLETION_PROMPT], label
    assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct"]


def test_alternating_settings_each_equal_a_fresh_llama_server(
    served: Served, references: dict[tuple[str, str], str]
) -> None:
    """Each request right after one under other vectors: nothing computed under the last
    request's vectors may leak into the next."""
    order = ["ornate", "simple", "ornate", "plain", "vivid", "plain", "mixed", "ornate"]
    for index, label in enumerate(order):
        prompt = PROMPTS[index % 2]
        status, reply = served.chat(prompt, label)
        assert status == 200, reply
        assert reply["choices"][0]["message"]["content"] == references[label, prompt], label
        assert reply["cvgen"]["control_vectors"] == dict(SELECTIONS[label])


def test_64_requests_from_8_clients_all_equal_their_references(
    served: Served, references: dict[tuple[str, str], str]
) -> None:
    rng = random.Random(15)
    draws = [(rng.choice(list(SETTINGS)), rng.choice(PROMPTS)) for _ in range(64)]
    rss_before = served.rss_kib()
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(
            pool.map(lambda draw: served.chat(draw[1], draw[0], tokens=LOAD_TOKENS), draws)
        )
    seconds = time.monotonic() - start
    rss_after = served.rss_kib()
    for (label, prompt), (status, reply) in zip(draws, replies, strict=True):
        assert status == 200, reply
        text = reply["choices"][0]["message"]["content"]
        assert text == references[label, f"{prompt}/short"], label
    for prompt in PROMPTS:  # the 8-token texts still tell (nearly) every setting apart
        assert len({references[label, f"{prompt}/short"] for label in SETTINGS}) >= 4
    tokens = sum(reply["usage"]["completion_tokens"] for _, reply in replies)
    print(
        f"load: 64 requests, 8 clients: {seconds:.1f} s, {tokens / seconds:.1f} tokens/s, "
        f"RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB"
    )


MESSAGES = b'{"messages": [{"role": "user", "content": "x"}]'


def test_repetition_penalties_are_llama_server_s(
    served: Served, references: dict[tuple[str, str], str]
) -> None:
    """Penalties at temperature 0, which count the prompt too, as llama-server's do."""
    status, reply = served.call(
        "/v1/chat/completions", {**PENALISED, "control_vectors": {"language": 1}}
    )
    assert status == 200, reply
    assert reply["choices"][0]["message"]["content"] == references["ornate", "penalised"]
    assert references["ornate", "penalised"] != references["ornate", PROMPTS[0]]


def _refused(status: int, reply: Any, field: str, code: int = 400) -> None:
    assert status == code, reply
    assert reply["error"]["param"] == field, reply
    assert reply["error"]["message"].startswith(field), reply


def test_bad_requests_get_a_4xx_naming_the_field_and_the_server_keeps_serving(
    served: Served, references: dict[tuple[str, str], str]
) -> None:
    chat = "/v1/chat/completions"
    good = {"messages": [{"role": "user", "content": PROMPTS[1]}], "temperature": 0,
            "max_tokens": TOKENS}  # fmt: skip
    cases: list[tuple[dict[str, Any] | bytes, str, int]] = [
        ({**good, "control_vectors": {"tone": 0.5}}, "control_vectors.tone", 400),
        ({**good, "preset": "loud"}, "preset", 400),
        ({**good, "control_vectors": {"language": "0.5"}}, "control_vectors.language", 400),
        ({**good, "control_vectors": {"language": 2}}, "control_vectors.language", 400),
        ({**good, "control_vectors": [1]}, "control_vectors", 400),
        ({**good, "max_tokens": -3}, "max_tokens", 400),
        ({**good, "max_tokens": 10**9}, "max_tokens", 400),
        ({**good, "max_tokens": "5"}, "max_tokens", 400),
        ({**good, "temperature": "hot"}, "temperature", 400),
        ({**good, "n": 3}, "n", 400),
        ({**good, "logprobs": True}, "logprobs", 400),
        ({**good, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", 400),
        ({"temperature": 0}, "messages", 400),
        (
            {**good, "messages": [{"role": "user", "content": "tide " * (CTX + 50)}]},
            "messages",
            400,
        ),
        (b'{"messages": [', "body", 400),
        (MESSAGES + b', "control_vectors": {"language": NaN}}', "control_vectors.language", 400),
        (MESSAGES + b', "control_vectors": {"language": 1e309}}', "control_vectors.language", 400),
        (MESSAGES + b', "temperature": NaN}', "temperature", 400),
        (b"[1, 2]", "body", 400),
        (b"[" * 3000, "body", 400),
        (MESSAGES + b', "max_tokens": 1' + b"0" * 5000 + b"}", "body", 400),
        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "body", 400),
        ({**good, "max_completion_tokens": 0}, "max_completion_tokens", 400),
        (b"x" * 70000, "body", 413),
    ]  # fmt: skip
    for body, field, code in cases:
        if isinstance(body, bytes):
            status, reply = served.call(chat, raw=body)
        else:
            status, reply = served.call(chat, body)
        _refused(status, reply, field, code)
    for key in (None, "wrong-key"):
        status, reply = served.call(chat, good, key=key)
        _refused(status, reply, "authorization", 401)
        _refused(*served.call("/health", key=key), "authorization", 401)
    foreign = {"Origin": "http://elsewhere.example"}
    _refused(*served.call(chat, good, headers=foreign), "origin", 403)
    rebound = {"Host": f"elsewhere.example:{served.url.rsplit(':', 1)[1]}"}
    _refused(*served.call(chat, good, headers=rebound), "host", 403)
    status, reply = served.call(chat, good, headers={"Origin": served.url})  # its own page
    assert status == 200, reply
    status, reply = served.call("/v1/nothing-here")
    assert status == 404 and "error" in reply
    status, reply = served.call(chat, {**good, "control_vectors": {}})
    assert status == 200
    assert reply["choices"][0]["message"]["content"] == references["plain", PROMPTS[1]]


def test_basic_auth_and_the_description_of_the_pack(served: Served, pack: Path) -> None:
    basic = base64.b64encode(f"anyone:{KEY}".encode()).decode()
    status, description = served.call(
        "/v1/control-vectors", key=None, headers={"Authorization": f"Basic {basic}"}
    )
    assert status == 200
    assert [axis["name"] for axis in description["axes"]] == ["language", "mood"]
    assert description["axes"][1]["classes"] == ["gloomy", "cheerful"]
    assert description["axes"][0]["safe_scale"] == {"negative": 1.5, "positive": 1.5}
    assert description["axes"][0]["blocks"] == list(range(8, 21))
    assert description["presets"] == {"vivid": {"language": 0.8, "mood": -0.5}}
    assert description["default"] == {} and description["allow_unsafe_scales"] is False
    status, _ = served.call("/", key=None)
    assert status == 401


def test_the_page_s_try_panel_streams_the_selection_and_the_unsteered_model(
    served: Served, references: dict[tuple[str, str], str], browser: Any
) -> None:
    """The real page from the real server in headless Chromium, the key sent as HTTP Basic:
    the panel's two columns are the fresh llama-server's texts at language=+1 and unsteered."""
    context = browser.new_context(
        viewport={"width": 1200, "height": 800},
        http_credentials={"username": "cvgen", "password": KEY},
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{served.url}/")
        page.fill("#axis-0-scale", "1")  # language, the pack's first axis
        page.fill("#try-prompt", PROMPTS[0])
        page.fill("#try-max-tokens", str(TOKENS))
        page.click("#try-run")
        done = " && ".join(
            f"document.getElementById('try-{column}-status').textContent.startsWith('finished')"
            for column in ("steered", "unsteered")
        )
        deadline = time.monotonic() + 60
        while not page.evaluate(done):
            failed = page.evaluate("document.getElementById('try-steered-error').textContent")
            assert not failed and time.monotonic() < deadline, failed
            time.sleep(0.1)
        assert page.text_content("#try-steered-label") == "language=+1"
        assert page.text_content("#try-steered-text") == references["ornate", PROMPTS[0]]
        assert page.text_content("#try-unsteered-text") == references["plain", PROMPTS[0]]
    finally:
        context.close()
    assert errors == []
