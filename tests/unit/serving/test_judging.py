"""The gateway's logic with fakes for Ray: idempotency by ids and content, the outbox, the model follower."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from inspectline.errors import (
    FrameIdConflictError,
    ModelNotFoundError,
    NotReadyError,
    OverloadedError,
    StoreError,
    UndecodableImageError,
)
from inspectline.registry import OperatingPoint
from inspectline.serving.journal import Journal
from inspectline.serving.judging import FrameService, ModelFollower, MonitorOutbox, sha256_of
from inspectline.serving.records import (
    ErrorObservation,
    FrameMeta,
    FrameObservation,
    InspectJob,
    JudgeFailure,
    Judgement,
    MonitorBatch,
    ServedModel,
    ShadowObservation,
    switch_instant,
)
from inspectline.store import StoredFrame

V1 = ServedModel("v0001")


def judgement(p: float = 0.8, version: str = "v0001") -> Judgement:
    return Judgement(
        verdict="DEFECTIVE" if p >= 0.5 else "OK",
        defect_probability=p,
        confidence=max(p, 1 - p),
        threshold=0.5,
        model_version=version,
        views={"identity": p},
        engine="torch",
        embedding=(0.0, 1.0),
        image_stats=(0.5, 0.1, 0.01, 0.0),
    )


class FakeInspector:
    """Judges by content: the defect probability is a function of the bytes, so answers can be traced."""

    def __init__(self, delay_s: float = 0.0):
        self.jobs: list[InspectJob] = []
        self.delay_s = delay_s

    async def __call__(self, job: InspectJob) -> Judgement | JudgeFailure:
        self.jobs.append(job)
        await asyncio.sleep(self.delay_s)
        if job.image.startswith(b"broken"):
            return JudgeFailure("undecodable_image", f"{job.name} is truncated")
        return judgement(p=(sum(job.image) % 100) / 100, version=job.model.version)


class FakeStore:
    def __init__(self):
        self.frames: dict[tuple[str, str, str], StoredFrame] = {}
        self.down = False
        self.lookups = 0

    async def find(self, key):
        self.lookups += 1
        if self.down:
            raise StoreError("database unreachable (test)")
        return self.frames.get(key)

    def add(self, key: tuple[str, str, str], image: bytes, p: float = 0.3) -> None:
        line, camera, frame = key
        self.frames[key] = StoredFrame(
            id=len(self.frames) + 1,
            line_id=line,
            camera_id=camera,
            frame_id=frame,
            part_id=None,
            captured_at=None,
            received_at=datetime(2026, 11, 1, tzinfo=timezone.utc),
            verdict="OK",
            defect_probability=p,
            confidence=1 - p,
            threshold=0.5,
            model_version="v0001",
            views={"identity": p},
            content_sha256=sha256_of(image),
            image_sha256=None,
            image_format=None,
            label=None,
            labelled_by=None,
            labelled_at=None,
        )


def meta(frame_id: str | None = "f1", line: str = "line-1", camera: str = "cam-1") -> FrameMeta:
    return FrameMeta(line_id=line, camera_id=camera, frame_id=frame_id or "gen-x", explicit_id=frame_id is not None)


class Sent:
    def __init__(self):
        self.batches: list[MonitorBatch] = []
        self.fail = False

    async def __call__(self, batch: MonitorBatch) -> None:
        if self.fail:
            raise ConnectionError("monitor restarting")
        self.batches.append(batch)

    @property
    def observations(self):
        return [o for b in self.batches for o in b.observations]


def make_service(tmp_path: Path, inspector=None, store=None, **kwargs) -> tuple[FrameService, FakeStore, Sent]:
    store = store or FakeStore()
    sent = Sent()
    follower = ModelFollower(target=lambda: V1, shadow=lambda: None, prepare_everywhere=_noop)
    follower.active = V1
    outbox = MonitorOutbox(sent, Journal(tmp_path / "journal"))
    service = FrameService(
        inspect=inspector or FakeInspector(),
        lookup=store.find,
        outbox=outbox,
        follower=follower,
        max_inflight=kwargs.pop("max_inflight", 8),
        **kwargs,
    )
    return service, store, sent


async def _noop(_model) -> None:
    return None


def run(coro):
    return asyncio.run(coro)


def test_same_ids_same_bytes_is_the_first_verdict_and_is_judged_once(tmp_path):
    inspector = FakeInspector()
    service, _, sent = make_service(tmp_path, inspector)

    async def scenario():
        first = await service.judge(meta(), b"image-a", received=time.perf_counter())
        again = await service.judge(meta(), b"image-a", received=time.perf_counter())
        await service.outbox.flush()
        return first, again

    first, again = run(scenario())
    assert not first.duplicate and again.duplicate
    assert (again.verdict, again.defect_probability, again.content_sha256) == (
        first.verdict,
        first.defect_probability,
        sha256_of(b"image-a"),
    )
    assert len(inspector.jobs) == 1
    assert len([o for o in sent.observations if isinstance(o, FrameObservation)]) == 1  # counted once


def test_same_ids_other_bytes_is_a_conflict_naming_both_hashes_and_nothing_is_judged(tmp_path):
    inspector = FakeInspector()
    service, _, sent = make_service(tmp_path, inspector)

    async def scenario():
        await service.judge(meta(), b"part-1", received=0.0)
        with pytest.raises(FrameIdConflictError) as err:
            await service.judge(meta(), b"part-2 (after a camera reboot)", received=0.0)
        await service.outbox.flush()
        return err.value

    error = run(scenario())
    assert (error.first_sha256, error.sent_sha256) == (
        sha256_of(b"part-1"),
        sha256_of(b"part-2 (after a camera reboot)"),
    )
    assert sha256_of(b"part-1") in str(error) and "new frame id" in str(error)
    assert len(inspector.jobs) == 1 and len(sent.observations) == 1


def test_the_key_is_scoped_by_line_and_camera(tmp_path):
    service, _, _ = make_service(tmp_path)

    async def scenario():
        a = await service.judge(meta(line="line-1"), b"x", received=0.0)
        b = await service.judge(meta(line="line-2"), b"y", received=0.0)  # same camera and frame id, other line
        c = await service.judge(meta(camera="cam-2"), b"z", received=0.0)
        return a, b, c

    assert not any(answer.duplicate for answer in run(scenario()))


def test_frames_without_an_id_are_never_duplicates(tmp_path):
    inspector = FakeInspector()
    service, store, _ = make_service(tmp_path, inspector)

    async def scenario():
        for _ in range(3):
            assert not (await service.judge(meta(frame_id=None), b"same bytes", received=0.0)).duplicate

    run(scenario())
    assert len(inspector.jobs) == 3 and store.lookups == 0


def test_a_retry_during_the_first_judgement_waits_for_it(tmp_path):
    inspector = FakeInspector(delay_s=0.2)
    service, _, _ = make_service(tmp_path, inspector)

    async def scenario():
        first, retry = await asyncio.gather(
            service.judge(meta(), b"slow", received=0.0), service.judge(meta(), b"slow", received=0.0)
        )
        with pytest.raises(FrameIdConflictError):
            await asyncio.gather(
                service.judge(meta("f2"), b"one", received=0.0), service.judge(meta("f2"), b"two", received=0.0)
            )
        return first, retry

    first, retry = run(scenario())
    assert len(inspector.jobs) == 2  # "slow" once, "one" once; "two" was refused, not judged
    assert retry.duplicate and retry.defect_probability == first.defect_probability


def test_the_store_is_the_authority_after_a_restart(tmp_path):
    inspector = FakeInspector()
    store = FakeStore()
    store.add(("line-1", "cam-1", "f1"), b"judged before the restart", p=0.12)
    service, _, sent = make_service(tmp_path, inspector, store)

    async def scenario():
        retry = await service.judge(meta(), b"judged before the restart", received=0.0)
        with pytest.raises(FrameIdConflictError):
            await service.judge(meta(), b"another image", received=0.0)
        await service.outbox.flush()
        return retry

    retry = run(scenario())
    assert retry.duplicate and retry.defect_probability == 0.12 and inspector.jobs == [] and sent.observations == []


def test_while_the_store_is_down_the_memory_decides_and_the_line_keeps_going(tmp_path):
    store = FakeStore()
    store.down = True
    service, _, _ = make_service(tmp_path, store=store)

    async def scenario():
        first = await service.judge(meta(), b"a", received=0.0)
        again = await service.judge(meta(), b"a", received=0.0)
        return first, again

    first, again = run(scenario())
    assert not first.duplicate and again.duplicate


def test_failures_map_to_errors_and_are_not_remembered(tmp_path):
    service, _, _ = make_service(tmp_path)

    async def scenario():
        with pytest.raises(UndecodableImageError, match="truncated"):
            await service.judge(meta(), b"broken png", received=0.0)
        return await service.judge(meta(), b"fixed png", received=0.0)  # same id, now a good image: judged

    assert not run(scenario()).duplicate


def test_in_flight_limit_refuses_at_once_with_retry_after(tmp_path):
    service, _, _ = make_service(tmp_path, max_inflight=2, retry_after_s=3)
    with service.admit(), service.admit():
        with pytest.raises(OverloadedError) as err:
            with service.admit():
                pass
        assert err.value.headers == {"Retry-After": "3"}
    with service.admit(2):
        assert service.inflight == 2
    assert service.inflight == 0


def test_not_ready_until_the_follower_switched(tmp_path):
    service, _, _ = make_service(tmp_path)
    service.follower.active = None
    service.follower.not_ready_reason = "no model is in production"
    with pytest.raises(NotReadyError, match="no model is in production") as err:
        run(service.judge(meta(), b"a", received=0.0))
    assert err.value.headers["Retry-After"] == "1"


def test_the_shadow_model_judges_in_the_background_and_never_answers(tmp_path):
    inspector = FakeInspector()
    service, _, sent = make_service(tmp_path, inspector)
    service.follower.shadow = ServedModel("v0002")

    async def scenario():
        answer = await service.judge(meta(), b"frame", received=0.0)
        await asyncio.sleep(0.05)
        await service.outbox.flush()
        return answer

    answer = run(scenario())
    assert answer.model_version == "v0001"
    assert [job.model.version for job in inspector.jobs] == ["v0001", "v0002"]
    shadow = [o for o in sent.observations if isinstance(o, ShadowObservation)]
    assert len(shadow) == 1 and shadow[0].model_version == "v0002" and shadow[0].production_verdict == answer.verdict


# --- the outbox ------------------------------------------------------------------------------------
def frame_observation(i: int, image_bytes: int = 10_000) -> FrameObservation:
    return FrameObservation(
        meta=meta(f"f{i}"),
        judgement=judgement(),
        image=bytes(image_bytes),
        content_sha256="0" * 64,
        received_at=datetime(2026, 11, 1, tzinfo=timezone.utc),
        latency_s=0.01,
    )


def test_the_outbox_holds_at_most_its_byte_bound_in_memory_and_delivers_all_in_order(tmp_path):
    sent = Sent()
    outbox = MonitorOutbox(sent, Journal(tmp_path / "j"), max_memory_bytes=55_000, max_batch=3)
    sent.fail = True  # the monitor is down while 20 frames are answered
    for i in range(20):
        outbox.put(frame_observation(i))
        assert outbox.memory_bytes <= 55_000
    assert run(outbox.flush()) == 0 and outbox.backlog == 20
    sent.fail = False
    assert run(outbox.flush()) == 20 and outbox.backlog == 0 and outbox.memory_bytes == 0
    assert [o.meta.frame_id for o in sent.observations] == [f"f{i}" for i in range(20)]
    assert all(len(b.observations) <= 3 for b in sent.batches)


def test_a_new_outbox_on_the_same_journal_delivers_what_the_old_one_did_not(tmp_path):
    sent = Sent()
    sent.fail = True
    first = MonitorOutbox(sent, Journal(tmp_path / "j"))
    for i in range(5):
        first.put(frame_observation(i))
    first.put(ErrorObservation(code="undecodable_image"))
    run(first.flush())
    first.journal.close()  # the replica dies with its backlog
    sent.fail = False
    second = MonitorOutbox(sent, Journal(tmp_path / "j"))
    assert second.backlog == 6
    assert run(second.flush()) == 6
    assert [getattr(o, "code", None) or o.meta.frame_id for o in sent.observations] == [
        "f0",
        "f1",
        "f2",
        "f3",
        "f4",
        "undecodable_image",
    ]


# --- the model follower ------------------------------------------------------------------------------
def test_the_follower_switches_only_after_every_replica_has_the_model_warm(tmp_path):
    prepared: list[ServedModel] = []
    target = {"model": ServedModel("v0001")}
    fail = {"on": None}

    async def prepare(model: ServedModel) -> None:
        if model == fail["on"]:
            raise RuntimeError("replica 3 of 3 could not load it")
        prepared.append(model)

    follower = ModelFollower(target=lambda: target["model"], shadow=lambda: None, prepare_everywhere=prepare)
    run(follower.poll_once())
    assert follower.active == ServedModel("v0001")
    target["model"] = fail["on"] = ServedModel("v0002")
    run(follower.poll_once())
    assert follower.active == ServedModel("v0001") and "could not load" in follower.not_ready_reason
    fail["on"] = None
    run(follower.poll_once())
    assert follower.active == ServedModel("v0002")
    # a new operating point for the same version rolls out the same way
    target["model"] = replace(target["model"], operating_point_at="2026-11-30T10:00:00+00:00")
    run(follower.poll_once())
    assert follower.active.operating_point_at == "2026-11-30T10:00:00+00:00"
    assert prepared == [ServedModel("v0001"), ServedModel("v0002"), follower.active]


class Replica:
    """A gateway replica's follower on a shared fake clock; ``load_s`` is how long warming a version takes it."""

    def __init__(self, clock: dict, target: dict, switch_at: float | None, load_s: float = 0.0):
        self.clock = clock

        async def prepare(_model: ServedModel) -> None:
            clock["t"] += load_s

        self.follower = ModelFollower(
            target=lambda: target["model"],
            shadow=lambda: None,
            prepare_everywhere=prepare,
            switch_at=lambda _model: switch_at,
            clock=lambda: clock["t"],
        )

    def judge_at(self, t: float) -> str:
        self.clock["t"] = t
        return self.follower.require_ready().version


def test_gateway_replicas_polling_at_different_times_switch_at_one_instant(caplog):
    """Frames received before the common instant get the old version from every replica, later ones the new."""
    clock, target = {"t": 100.0}, {"model": V1}
    a, b = Replica(clock, target, switch_at=105.0, load_s=0.4), Replica(clock, target, switch_at=105.0, load_s=2.5)
    for replica in (a, b):
        run(replica.follower.poll_once())  # the first version: served as soon as it is warm, whatever the instant
    assert a.judge_at(100.5) == b.judge_at(100.5) == "v0001"
    target["model"] = ServedModel("v0002")  # promoted at 101 (say), switch_delay_s 4 -> 105
    clock["t"] = 101.2
    run(a.follower.poll_once())  # warm at 101.6
    assert a.follower.pending == (ServedModel("v0002"), 105.0) and a.follower.active == V1
    assert a.judge_at(103.0) == "v0001"  # warm, but not yet its time: b has not even noticed the promotion
    clock["t"] = 101.9
    run(b.follower.poll_once())  # a slower replica, warm at 104.4
    assert b.follower.in_service() == [V1, ServedModel("v0002")]  # what an inspector starting now must warm
    assert [r.judge_at(104.99) for r in (a, b)] == ["v0001", "v0001"]
    assert [r.judge_at(105.0) for r in (a, b)] == ["v0002", "v0002"]
    assert a.follower.pending is None and b.follower.active == ServedModel("v0002")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_replica_warm_only_after_the_instant_switches_at_once_and_says_how_late(caplog):
    clock, target = {"t": 100.0}, {"model": V1}
    slow = Replica(clock, target, switch_at=103.0, load_s=5.0)
    run(slow.follower.poll_once())
    target["model"] = ServedModel("v0002")
    run(slow.follower.poll_once())  # warm at 110: 7 s after the instant
    assert slow.follower.active == ServedModel("v0002") and slow.follower.pending is None
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "7.0 s after the instant" in warning.getMessage() and "raise switch_delay_s" in warning.getMessage()


def test_a_pending_switch_is_called_off_when_the_target_returns_before_its_instant():
    clock, target = {"t": 100.0}, {"model": V1}
    replica = Replica(clock, target, switch_at=105.0)
    run(replica.follower.poll_once())
    target["model"] = ServedModel("v0002")
    run(replica.follower.poll_once())
    assert replica.follower.pending is not None
    target["model"] = V1  # rolled back within the delay
    run(replica.follower.poll_once())
    assert replica.follower.pending is None and replica.judge_at(200.0) == "v0001"


def test_without_a_switch_instant_the_follower_switches_once_warm():
    clock, target = {"t": 100.0}, {"model": V1}
    replica = Replica(clock, target, switch_at=None, load_s=1.0)
    run(replica.follower.poll_once())
    target["model"] = ServedModel("v0002")
    run(replica.follower.poll_once())
    assert replica.follower.pending is None and replica.judge_at(101.0) == "v0002"


def test_every_replica_computes_the_same_switch_instant_from_the_registrys_record(own_registry):
    promoted = datetime.fromisoformat(own_registry.pointer()["updated_at"]).timestamp()
    served = ServedModel.in_force(own_registry, "v0001")
    for poll in (promoted + 0.3, promoted + 1.7, promoted + 30):  # whenever a replica's poll notices it
        assert switch_instant(own_registry, "production", served, 5.0, poll) == promoted + 5
    assert switch_instant(own_registry, "production", served, 0.0, promoted) is None  # no delay: once warm
    assert switch_instant(own_registry, "v0001", served, 5.0, promoted) is None  # pinned: no record to share
    own_registry.set_operating_point("v0001", OperatingPoint(threshold=0.4, basis="manual", actor="ana"))
    pointed = ServedModel.in_force(own_registry, "v0001")
    at = datetime.fromisoformat(pointed.operating_point_at).timestamp()
    assert switch_instant(own_registry, "v0001", pointed, 5.0, at + 1) == at + 5  # pinned, new operating point
    assert switch_instant(own_registry, "production", pointed, 5.0, at + 1) == max(at, promoted) + 5
    ahead = replace(served, operating_point_at="2099-01-01T00:00:00+00:00")  # a clock far ahead: held to now + delay
    assert switch_instant(own_registry, "v0001", ahead, 5.0, promoted) == promoted + 5
    garbled = replace(served, operating_point_at="yesterday")  # a hand-edited record: switch once warm
    assert switch_instant(own_registry, "v0001", garbled, 5.0, promoted) is None


def test_the_follower_reports_a_missing_production_model():
    def target() -> ServedModel:
        raise ModelNotFoundError("no model is in production in models/")

    follower = ModelFollower(target=target, shadow=lambda: None, prepare_everywhere=_noop)
    run(follower.poll_once())
    with pytest.raises(NotReadyError, match="no model is in production"):
        follower.require_ready()
