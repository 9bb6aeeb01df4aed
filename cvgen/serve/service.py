"""The model, loaded once, behind one worker thread: requests are queued and run one at a time,
each under its own vectors, so two requests are never computed in one context at once.

`Service.submit` puts a job on the queue (refused with `Busy` when `max_queue` jobs wait) and
returns a `Ticket`, an asyncio-side view of the job: `events()` yields its text pieces as the
worker makes them and then its `Finished`. Closing the ticket early (a client that went away)
cancels the job; the worker notices before its next token.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from cvgen.common.errors import CvgenError
from cvgen.engine.model import LlamaModel, open_model
from cvgen.pack.steering import PackSteering, Selection
from cvgen.serve.generation import Finished, Generator, Job
from cvgen.serve.prompts import PromptMaker


class Busy(CvgenError, RuntimeError):
    """The queue is full."""


@dataclass(frozen=True)
class ServeSettings:
    """The server's bounds: context size, the largest `max_tokens` a request may ask (also the
    default), queued requests, request body bytes, and CPU threads."""

    ctx_size: int = 4096
    max_tokens: int = 512
    max_queue: int = 64
    max_body_bytes: int = 1 << 20
    threads: int | None = None
    gpu_layers: int = 0


class Ticket:
    """One queued job as the event loop sees it."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop, *, stream: bool = True):
        self.job = job
        self.loop = loop
        self.stream = stream  # False: only the result is sent (no wake-up of the loop a token)
        self.events_queue: asyncio.Queue[str | Finished | BaseException] = asyncio.Queue()

    def put(self, item: str | Finished | BaseException) -> None:
        """Called from the worker thread; a loop already closed (shutting down) drops it."""
        try:
            self.loop.call_soon_threadsafe(self.events_queue.put_nowait, item)
        except RuntimeError:
            self.job.cancelled.set()

    async def events(self) -> AsyncIterator[str | Finished]:
        """The job's text pieces, then its `Finished`; an error in the job is raised here.
        Leaving early cancels the job."""
        try:
            while True:
                item = await self.events_queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            self.job.cancelled.set()

    async def result(self) -> Finished:
        async for item in self.events():
            if isinstance(item, Finished):
                return item
        raise RuntimeError("the job ended without a result")  # pragma: no cover


class Service:
    """The pack's steering, the model, and the worker (see the module docstring)."""

    def __init__(
        self,
        steering: PackSteering,
        model_path: Path,
        settings: ServeSettings,
        *,
        default: Selection = (),
    ):
        self.steering = steering
        self.settings = settings
        self.default = default
        self.model_path = Path(model_path)
        self.model: LlamaModel = open_model(self.model_path, gpu_layers=settings.gpu_layers)
        try:
            self.generator = Generator(
                self.model, ctx_size=settings.ctx_size, threads=settings.threads
            )
        except BaseException:
            self.model.close()
            raise
        self.prompts = PromptMaker(self.model)
        self.model_id = steering.manifest.model.name or self.model_path.stem
        self.queue: queue.Queue[tuple[Job, Ticket] | None] = queue.Queue()
        self.waiting = 0
        self.served = 0
        self.current: Job | None = None
        self._lock = threading.Lock()
        self.worker = threading.Thread(target=self._work, name="cvgen-serve-worker", daemon=True)
        self.worker.start()

    def submit(self, job: Job, *, stream: bool = True) -> Ticket:
        """Queue `job`; its text pieces reach the ticket only when `stream`."""
        ticket = Ticket(job, asyncio.get_running_loop(), stream=stream)
        with self._lock:
            if self.waiting >= self.settings.max_queue:
                raise Busy(f"{self.waiting} requests are waiting (--max-queue); try again later")
            self.waiting += 1
        self.queue.put((job, ticket))
        return ticket

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            job, ticket = item
            with self._lock:
                self.waiting -= 1
            if job.cancelled.is_set():
                continue
            self.current = job
            try:
                finished = self.generator.generate(job, ticket.put if ticket.stream else None)
            except BaseException as exc:  # reported to the request, the worker goes on
                ticket.put(exc)
                continue
            finally:
                self.current = None
            self.served += 1
            ticket.put(finished)

    def close(self) -> None:
        """Cancel the queued jobs and the running one, stop the worker, then free the model
        (only once the worker has stopped: it may be inside a decode)."""
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancelled.set()
        running = self.current
        if running is not None:
            running.cancelled.set()
        self.queue.put(None)
        self.worker.join(timeout=120)
        if not self.worker.is_alive():
            self.generator.close()
            self.model.close()
