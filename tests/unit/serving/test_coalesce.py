"""The coalescer: frames that arrive together share one inspector call, and each gets its own answer."""

import asyncio
import random

import pytest

from inspectline.serving.coalesce import Coalescer


class Inspector:
    """Answers each job with a value derived from it, after a random delay; records the calls."""

    def __init__(self, fail_on: set[str] | None = None, drop_one: bool = False):
        self.calls: list[list[str]] = []
        self.fail_on, self.drop_one = fail_on or set(), drop_one

    async def judge_many(self, jobs: list[str]) -> list[str]:
        self.calls.append(list(jobs))
        await asyncio.sleep(random.uniform(0, 0.01))
        if self.fail_on & set(jobs):
            msg = "replica died"
            raise ConnectionError(msg)
        answers = [f"verdict of {job}" for job in jobs]
        return answers[:-1] if self.drop_one else answers


def test_jobs_arriving_together_share_one_call_and_each_gets_its_own_answer():
    inspector = Inspector()

    async def main():
        coalesce = Coalescer(inspector.judge_many, window_s=0.005, max_jobs=64)
        jobs = [f"frame-{i}" for i in range(20)]
        return jobs, await asyncio.gather(*(coalesce(job) for job in jobs))

    jobs, answers = asyncio.run(main())
    assert answers == [f"verdict of {job}" for job in jobs]
    assert len(inspector.calls) == 1 and sorted(inspector.calls[0]) == sorted(jobs)


def test_a_group_never_exceeds_max_jobs():
    inspector = Inspector()

    async def main():
        coalesce = Coalescer(inspector.judge_many, window_s=0.005, max_jobs=8)
        return await asyncio.gather(*(coalesce(f"frame-{i}") for i in range(20)))

    answers = asyncio.run(main())
    assert answers == [f"verdict of frame-{i}" for i in range(20)]
    assert [len(call) for call in inspector.calls] == [8, 8, 4]


def test_jobs_apart_in_time_go_in_calls_of_their_own_and_a_lone_job_is_not_held_back():
    inspector = Inspector()

    async def main():
        coalesce = Coalescer(inspector.judge_many, window_s=0.001, max_jobs=8)
        first = await asyncio.wait_for(coalesce("a"), timeout=1)
        second = await asyncio.wait_for(coalesce("b"), timeout=1)
        return first, second

    assert asyncio.run(main()) == ("verdict of a", "verdict of b")
    assert inspector.calls == [["a"], ["b"]]


def test_window_zero_still_groups_the_jobs_of_one_loop_turn():
    inspector = Inspector()

    async def main():
        coalesce = Coalescer(inspector.judge_many, window_s=0.0, max_jobs=8)
        return await asyncio.gather(*(coalesce(f"f{i}") for i in range(5)))

    assert asyncio.run(main()) == [f"verdict of f{i}" for i in range(5)]
    assert len(inspector.calls) == 1


def test_a_failed_call_fails_its_own_group_only():
    inspector = Inspector(fail_on={"frame-9"})

    async def main():
        coalesce = Coalescer(inspector.judge_many, window_s=0.005, max_jobs=8)
        return await asyncio.gather(*(coalesce(f"frame-{i}") for i in range(16)), return_exceptions=True)

    answers = asyncio.run(main())
    assert all(answers[i] == f"verdict of frame-{i}" for i in range(8))
    assert all(isinstance(a, ConnectionError) for a in answers[8:])


def test_a_short_answer_is_an_error_for_every_frame_never_a_shifted_verdict():
    inspector = Inspector(drop_one=True)

    async def main():
        coalesce = Coalescer(inspector.judge_many, window_s=0.005, max_jobs=8)
        return await asyncio.gather(*(coalesce(f"frame-{i}") for i in range(4)), return_exceptions=True)

    answers = asyncio.run(main())
    assert all(isinstance(a, RuntimeError) and "3 of 4" in str(a) for a in answers)


def test_a_caller_that_gives_up_does_not_disturb_the_others():
    inspector = Inspector()

    async def main():
        coalesce = Coalescer(inspector.judge_many, window_s=0.005, max_jobs=8)
        tasks = [asyncio.create_task(coalesce(f"frame-{i}")) for i in range(4)]
        await asyncio.sleep(0)
        tasks[1].cancel()  # the client went away
        return await asyncio.gather(*tasks, return_exceptions=True)

    answers = asyncio.run(main())
    assert isinstance(answers[1], asyncio.CancelledError)
    assert [answers[i] for i in (0, 2, 3)] == ["verdict of frame-0", "verdict of frame-2", "verdict of frame-3"]


def test_nonsense_settings_are_refused():
    with pytest.raises(ValueError, match="max_jobs"):
        Coalescer(Inspector().judge_many, window_s=0.001, max_jobs=0)
