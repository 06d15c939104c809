"""One call to the inspectors for the frames that arrive together, instead of one call per frame.

Every call from the gateway to an inspector replica costs CPU on both sides that has nothing to do with
the frame: Ray serialises the arguments, routes the request, runs it as an actor task and sends the
result back. Measured on a 2-core Xeon it was a large share of the ~25 ms of plumbing per frame that a
batch post paid, once per frame. :class:`Coalescer` gathers the jobs that arrive within ``window_s`` of
the first one (the frames of a batch post, concurrent single posts) into one call of ``send_many`` with
at most ``max_jobs`` jobs; the inspector still decodes each in a thread of its own and its dynamic
batcher still forms the model batches. With ``window_s`` 0 a group is what reaches the coalescer in
one event-loop turn: the frames of one batch post, rarely two single posts. That is the gateway's
default: Ray routes a call, not its frames, so grouping single posts can load one replica with eight
frames while the other idles, and on 2 cores it bought no single-post throughput (see the README).

Each caller gets exactly the result at its job's position; a group whose call fails, or returns the wrong
number of results, fails every caller in it with that error — never another frame's verdict. Ray-free:
the gateway passes a ``send_many`` that calls ``Inspector.judge_many``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


class Coalescer(Generic[J, R]):
    def __init__(self, send_many: Callable[[list[J]], Awaitable[Sequence[R]]], *, window_s: float, max_jobs: int):
        if max_jobs < 1 or window_s < 0:
            msg = f"max_jobs must be >= 1 and window_s >= 0 (got {max_jobs}, {window_s})"
            raise ValueError(msg)
        self._send_many = send_many
        self.window_s, self.max_jobs = window_s, max_jobs
        self._queue: list[tuple[J, asyncio.Future[R]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._calls: set[asyncio.Task] = set()

    async def __call__(self, job: J) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((job, future))
        if len(self._queue) >= self.max_jobs:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        group, self._queue = self._queue, []
        if group:
            task = asyncio.get_running_loop().create_task(self._call(group))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _call(self, group: list[tuple[J, asyncio.Future[R]]]) -> None:
        try:
            results = list(await self._send_many([job for job, _ in group]))
            if len(results) != len(group):
                msg = f"the inspector answered {len(results)} of {len(group)} frames"
                raise RuntimeError(msg)
        except BaseException as exc:  # every waiter hears what happened to its call
            for _, future in group:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
                    future.exception()  # retrieved: a caller that gave up is not a "never retrieved" warning
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(group, results, strict=True):
            if not future.done():  # the caller may have given up (client disconnected)
                future.set_result(result)
