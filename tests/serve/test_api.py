"""A plain (not streamed) request whose client disconnects cancels its job, and one whose
client stays gets the job's result."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cvgen.serve.api import ClientGone, _unless_gone
from cvgen.serve.generation import Finished, Job
from cvgen.serve.service import Ticket


class FakeHttp:
    """A request whose `receive` says the client left after `after` seconds (None: never)."""

    def __init__(self, after: float | None):
        self.after = after

    async def receive(self) -> dict[str, Any]:
        if self.after is None:
            await asyncio.sleep(3600)
        await asyncio.sleep(self.after or 0)
        return {"type": "http.disconnect"}


def run(after: float | None, finish_in: float) -> tuple[Job, Any]:
    async def main() -> tuple[Job, Any]:
        job = Job(prompt=[1], vectors={}, max_tokens=4)
        ticket = Ticket(job, asyncio.get_running_loop())
        done = Finished("text", "stop", 1, 1)
        asyncio.get_running_loop().call_later(finish_in, ticket.put, done)
        try:
            return job, await _unless_gone(FakeHttp(after), ticket)  # type: ignore[arg-type]
        except ClientGone as exc:
            return job, exc

    return asyncio.run(main())


def test_a_client_that_leaves_cancels_its_job() -> None:
    job, outcome = run(after=0.01, finish_in=1.0)
    assert isinstance(outcome, ClientGone)
    assert job.cancelled.is_set()


@pytest.mark.parametrize("after", [None, 0.5])
def test_a_client_that_stays_gets_the_result(after: float | None) -> None:
    _, outcome = run(after=after, finish_in=0.01)
    assert outcome == Finished("text", "stop", 1, 1)
