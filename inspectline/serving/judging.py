"""The gateway's logic, without Ray: idempotent judging, the monitor outbox and the model follower.

Each class takes plain async callables for what crosses a process boundary (an inspector replica, the
line monitor, the frame store, the registry), so tests drive them with fakes and the deployment in
``serving.gateway`` only wires Ray handles in.

**Idempotency** (:class:`FrameService`). A frame is keyed by ``(line_id, camera_id, frame_id)`` *and* the
SHA-256 of its bytes:

    same key, same bytes       -> the first verdict again, ``duplicate: true`` (a safe retry; judged once)
    same key, different bytes  -> FrameIdConflictError (409) naming both hashes; nothing judged or stored
    no frame id sent           -> a generated id; never a duplicate

Recent verdicts are remembered in memory (a bounded cache); on a miss the frame store, the authority, is
asked, so the rule holds across restarts and across gateway replicas. A retry that arrives while the first
attempt is still being judged waits for that verdict. Either way a returned verdict always belongs to
bytes with the same hash as the ones sent. (Two replicas that receive the same key within the moment
before the first frame reaches the store both judge it; each answer is still its own image's verdict.)

**Outbox** (:class:`MonitorOutbox`). Every answer becomes an observation appended to the replica's
journal (``serving.journal``) before the answer goes out, and is sent to the line monitor in batches; it
is forgotten once the monitor acknowledges it. Memory holds at most ``max_memory_bytes`` of it; the rest
waits on disk only. A replica killed with a backlog loses nothing: the next replica adopts its journal.

**Model follower** (:class:`ModelFollower`). The gateway decides which version judges each frame. On a
promotion (or a new operating point) it has *every* inspector replica load and warm the new target, and
switches only when all of them answered: frames in flight finish on the old one. Where several gateway
replicas each follow the registry on their own poll (``judge: gateway``), each one also waits for the
instant the registry's record of the change gives them all (``switch_at``): a frame received before it is
judged by the old version whichever replica gets it, one received after it by the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from inspectline.errors import (
    FrameIdConflictError,
    ImageTooLargeError,
    InspectError,
    InvalidImageError,
    ModelNotFoundError,
    NotReadyError,
    OverloadedError,
    StoreError,
    UndecodableImageError,
    UnsupportedImageError,
)
from inspectline.serving.journal import Journal, Position, adopt_orphans
from inspectline.serving.records import (
    ErrorObservation,
    FrameMeta,
    FrameObservation,
    InspectJob,
    JudgeFailure,
    Judgement,
    MonitorBatch,
    Observation,
    ServedModel,
    ShadowObservation,
)
from inspectline.store import FrameStore, StoredFrame

log = logging.getLogger("ray.serve")

Inspect = Callable[[InspectJob], Awaitable["Judgement | JudgeFailure"]]
Lookup = Callable[[tuple[str, str, str]], Awaitable["StoredFrame | None"]]

_FAILURES: dict[str, type[InspectError]] = {
    "unsupported_image": UnsupportedImageError,
    "image_too_large": ImageTooLargeError,
    "undecodable_image": UndecodableImageError,
    "unprocessable": InvalidImageError,
    "model_unavailable": NotReadyError,
}


@dataclass(frozen=True)
class Answer:
    """The verdict a client gets for one frame."""

    meta: FrameMeta
    verdict: str
    defect_probability: float
    confidence: float
    threshold: float
    model_version: str
    views: dict[str, float] = field(hash=False)
    received_at: datetime
    latency_s: float
    content_sha256: str
    duplicate: bool = False


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FrameService:
    """Judges frames once per (ids, content), within the in-flight limit; see the module docstring."""

    def __init__(
        self,
        *,
        inspect: Inspect,
        lookup: Lookup,
        outbox: MonitorOutbox,
        follower: ModelFollower,
        max_inflight: int,
        retry_after_s: int = 1,
        recent_capacity: int = 100_000,
    ):
        self._inspect, self._lookup, self.outbox, self.follower = inspect, lookup, outbox, follower
        self.max_inflight, self.retry_after_s = max_inflight, retry_after_s
        self.recent_capacity = recent_capacity
        self.inflight = 0
        self._recent: OrderedDict[tuple[str, str, str], Answer] = OrderedDict()
        self._pending: dict[tuple[str, str, str], tuple[str, asyncio.Future[Answer]]] = {}
        self._shadow_tasks: set[asyncio.Task] = set()

    @contextlib.contextmanager
    def admit(self, frames: int = 1) -> Iterator[None]:
        """Hold ``frames`` in-flight slots, or refuse at once with 503 (checked before any expensive work)."""
        if self.inflight + frames > self.max_inflight:
            msg = f"{self.inflight} frames are being judged (limit {self.max_inflight}); retry shortly"
            raise OverloadedError(msg, headers={"Retry-After": str(self.retry_after_s)})
        self.inflight += frames
        try:
            yield
        finally:
            self.inflight -= frames

    async def judge(self, meta: FrameMeta, image: bytes, *, received: float, name: str = "image") -> Answer:
        """The verdict for one frame, judged at most once per key and content (see the module docstring)."""
        sha = sha256_of(image)
        if not meta.explicit_id:
            return await self._judge_new(meta, image, sha, received, name)
        key = meta.key
        known = self._recent.get(key)
        if known is not None:
            return _same_content(known, meta, sha)
        if key in self._pending:
            first_sha, first = self._pending[key]
            if first_sha != sha:
                raise _conflict(meta, first_sha, sha)
            return replace(await asyncio.shield(first), duplicate=True, latency_s=0.0)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[key] = (sha, future)
        try:
            stored = await self._stored(key)
            if stored is not None:
                answer = _same_content(_from_stored(stored), meta, sha)
            else:
                answer = await self._judge_new(meta, image, sha, received, name)
                self._remember(answer)
            future.set_result(answer)
            return answer
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        finally:
            self._pending.pop(key, None)

    async def _stored(self, key: tuple[str, str, str]) -> StoredFrame | None:
        """The store's frame under ``key``; while the store is down the memory alone decides (logged)."""
        try:
            return await self._lookup(key)
        except StoreError as exc:
            log.warning("frame store unavailable for the repeated-id check of %s: %s", "/".join(key), exc)
            return None

    async def _judge_new(self, meta: FrameMeta, image: bytes, sha: str, received: float, name: str) -> Answer:
        model = self.follower.require_ready()
        result = await self._inspect(InspectJob(image=image, model=model, camera_id=meta.camera_id, name=name))
        if isinstance(result, JudgeFailure):
            raise self._failure(result)
        answer = Answer(
            meta=meta,
            verdict=result.verdict,
            defect_probability=result.defect_probability,
            confidence=result.confidence,
            threshold=result.threshold,
            model_version=result.model_version,
            views=dict(result.views),
            received_at=datetime.now(timezone.utc),
            latency_s=time.perf_counter() - received,
            content_sha256=sha,
        )
        self.outbox.put(
            FrameObservation(
                meta=meta,
                judgement=result,
                image=image,
                content_sha256=sha,
                received_at=answer.received_at,
                latency_s=answer.latency_s,
            )
        )
        self._shadow(meta, image, answer)
        return answer

    def _failure(self, failure: JudgeFailure) -> InspectError:
        error = _FAILURES.get(failure.kind, InvalidImageError)
        if error is NotReadyError:
            return NotReadyError(failure.detail, headers={"Retry-After": str(self.retry_after_s)})
        return error(failure.detail)

    def _remember(self, answer: Answer) -> None:
        if not self.recent_capacity:
            return
        self._recent[answer.meta.key] = answer
        while len(self._recent) > self.recent_capacity:
            self._recent.popitem(last=False)

    def remember_stored(self, frames: list[StoredFrame]) -> None:
        """Warm the cache after a restart with the store's newest verdicts (oldest first)."""
        for frame in frames:
            if frame.content_sha256 is not None:
                self._remember(_from_stored(frame))

    # --- shadow model ------------------------------------------------------------------------------
    def _shadow(self, meta: FrameMeta, image: bytes, answer: Answer) -> None:
        """Have the shadow model judge the frame too, in the background; its answer never reaches the line."""
        shadow = self.follower.shadow
        if shadow is None or shadow.version == answer.model_version:
            return
        if len(self._shadow_tasks) >= self.max_inflight:  # production traffic comes first
            self.outbox.put(ErrorObservation(code="shadow_skipped"))
            return
        task = asyncio.get_running_loop().create_task(self._judge_shadow(meta, image, answer, shadow))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _judge_shadow(self, meta: FrameMeta, image: bytes, answer: Answer, shadow: ServedModel) -> None:
        try:
            result = await self._inspect(InspectJob(image=image, model=shadow, camera_id=meta.camera_id))
        except Exception as exc:  # noqa: BLE001 - a failing shadow must not disturb production
            log.warning("shadow model %s failed on frame %s: %s", shadow, meta.frame_id, exc)
            return
        if isinstance(result, Judgement):
            self.outbox.put(
                ShadowObservation(
                    meta=meta,
                    model_version=result.model_version,
                    verdict=result.verdict,
                    defect_probability=result.defect_probability,
                    production_verdict=answer.verdict,
                    received_at=answer.received_at,
                )
            )


def _same_content(known: Answer, meta: FrameMeta, sha: str) -> Answer:
    """The first answer again (a retry's own metadata, e.g. captured_at, does not change it), or a conflict."""
    if known.content_sha256 != sha:
        raise _conflict(meta, known.content_sha256, sha)
    return replace(known, duplicate=True, latency_s=0.0)


def _conflict(meta: FrameMeta, first_sha: str | None, sha: str) -> FrameIdConflictError:
    first = first_sha or "unknown (stored before content hashes were kept)"
    msg = (
        f"frame {meta.frame_id!r} of camera {meta.camera_id!r} on line {meta.line_id!r} was already judged for "
        f"other image bytes (sha256 {first}); these bytes have sha256 {sha}. Send a new frame id for a new image"
    )
    error = FrameIdConflictError(msg)
    error.first_sha256, error.sent_sha256 = first_sha, sha  # type: ignore[attr-defined]
    return error


def _from_stored(frame: StoredFrame) -> Answer:
    return Answer(
        meta=FrameMeta(
            line_id=frame.line_id,
            camera_id=frame.camera_id,
            frame_id=frame.frame_id,
            part_id=frame.part_id,
            captured_at=frame.captured_at,
        ),
        verdict=frame.verdict,
        defect_probability=frame.defect_probability,
        confidence=frame.confidence,
        threshold=frame.threshold,
        model_version=frame.model_version,
        views=dict(frame.views),
        received_at=frame.received_at,
        latency_s=0.0,
        content_sha256=frame.content_sha256,
    )


class MonitorOutbox:
    """Observations for the line monitor: journaled, bounded in memory by bytes, sent in acknowledged batches."""

    def __init__(
        self,
        send: Callable[[MonitorBatch], Awaitable[None]],
        journal: Journal,
        *,
        max_memory_bytes: int = 256 * 2**20,
        max_batch: int = 256,
    ):
        self._send, self.journal = send, journal
        self.max_memory_bytes, self.max_batch = max_memory_bytes, max_batch
        self._queue: deque[tuple[Position, Observation]] = deque()
        self._memory_bytes = 0
        self._on_disk_from: Position | None = None  # first record that waits on disk only
        self._on_disk = 0
        self._lock = asyncio.Lock()
        self.failures = 0
        for _ in journal.unacked():  # left by an earlier run of this journal's owner, or adopted
            self._on_disk += 1
        if self._on_disk:
            self._on_disk_from = Position(0, 0)

    @classmethod
    def open(cls, send: Callable[[MonitorBatch], Awaitable[None]], spool_dir: Path, **kwargs) -> MonitorOutbox:
        """A journal of our own under ``spool_dir/gateway/``, with the journals of dead replicas adopted."""
        parent = Path(spool_dir) / "gateway"
        journal = Journal(parent / uuid.uuid4().hex[:12])
        adopt_orphans(parent, journal)
        return cls(send, journal, **kwargs)

    @property
    def backlog(self) -> int:
        return len(self._queue) + self._on_disk

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    def put(self, observation: Observation) -> None:
        """Journal one observation (before its answer goes out) and queue it for the monitor."""
        position = self.journal.append(observation)
        size = observation.size_bytes
        if self._on_disk_from is None and self._memory_bytes + size <= self.max_memory_bytes:
            self._queue.append((position, observation))
            self._memory_bytes += size
        else:
            if self._on_disk_from is None:
                self._on_disk_from = self._queue[-1][0] if self._queue else Position(0, 0)
            self._on_disk += 1

    async def flush(self) -> int:
        """Send everything pending, batch by batch; returns how many were acknowledged. Keeps all on failure."""
        sent = 0
        async with self._lock:
            self.journal.sync()
            while True:
                self._refill()
                if not self._queue:
                    return sent
                batch = [self._queue[i] for i in range(min(self.max_batch, len(self._queue)))]
                try:
                    await self._send(MonitorBatch(batch_id=uuid.uuid4().hex, observations=tuple(o for _, o in batch)))
                except Exception as exc:  # noqa: BLE001 - the monitor may be restarting; the line must not notice
                    self.failures += 1
                    log.warning("line monitor unreachable (%s); %d observations wait in the journal", exc, self.backlog)
                    return sent
                for _ in batch:
                    _, observation = self._queue.popleft()
                    self._memory_bytes -= observation.size_bytes
                self.journal.ack(batch[-1][0])
                sent += len(batch)

    def _refill(self) -> None:
        """Bring records that wait on disk only back into memory, oldest first, up to the bound."""
        if self._on_disk_from is None or self._queue:
            return
        loaded = 0
        for position, observation in self.journal.unacked(after=self._on_disk_from):
            if loaded and self._memory_bytes + observation.size_bytes > self.max_memory_bytes:
                break
            self._queue.append((position, observation))
            self._memory_bytes += observation.size_bytes
            loaded += 1
        self._on_disk -= loaded
        if self._on_disk <= 0:
            self._on_disk, self._on_disk_from = 0, None
        elif self._queue:
            self._on_disk_from = self._queue[-1][0]

    async def run_forever(self, interval_s: Callable[[], float]) -> None:
        while True:
            await asyncio.sleep(interval_s())
            await self.flush()


class ModelFollower:
    """Follows the configured model reference; switches only once every inspector replica has it warm.

    The target is a :class:`ServedModel`: a version *and* the operating point in force for it, so a new
    threshold chosen with ``inspect models set-threshold`` is rolled out exactly like a promotion.

    ``switch_at(model)`` (optional) gives the wall-clock instant (epoch seconds) at which a warmed target
    takes over, the same for every replica that follows the same registry; None switches as soon as it is
    warm. Until then frames keep the version in service; which one judges a frame is decided by the clock
    when the frame asks (:meth:`require_ready`), not by when this replica's poll happens to run. A replica
    that is warm only after the instant switches at once and logs how late it was.
    """

    LATE_WARNING_S = 0.5  # a replica this far past the common instant says so: the delay is too short

    def __init__(
        self,
        *,
        target: Callable[[], ServedModel],
        shadow: Callable[[], ServedModel | None],
        prepare_everywhere: Callable[[ServedModel], Awaitable[None]],
        retry_after_s: int = 1,
        switch_at: Callable[[ServedModel], float | None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._target, self._shadow, self._prepare = target, shadow, prepare_everywhere
        self._switch_at, self._clock = switch_at, clock
        self.retry_after_s = retry_after_s
        self._active: ServedModel | None = None
        self.pending: tuple[ServedModel, float] | None = None  # warm, and the instant it takes over
        self.shadow: ServedModel | None = None
        self.not_ready_reason = "the model is loading"

    @property
    def active(self) -> ServedModel | None:
        """The model judging frames now (a pending switch whose instant has come included)."""
        if self.pending is not None and self._clock() >= self.pending[1]:
            model, _ = self.pending
            log.info("serving model %s (was %s) at the switch instant", model, self._active)
            self._active, self.pending = model, None
        return self._active

    @active.setter
    def active(self, model: ServedModel | None) -> None:
        self._active, self.pending = model, None

    def require_ready(self) -> ServedModel:
        active = self.active
        if active is None:
            raise NotReadyError(self.not_ready_reason, headers={"Retry-After": str(self.retry_after_s)})
        return active

    async def poll_once(self) -> None:
        """One check of the registry: warm and switch to a new target or shadow (errors keep the current one)."""
        try:
            shadow = self._shadow()
            if shadow != self.shadow:
                if shadow is not None:
                    await self._prepare(shadow)
                log.info("shadow model: %s (was %s)", shadow, self.shadow)
                self.shadow = shadow
            target, active = self._target(), self.active
            if target == active:
                if self.pending is not None:
                    log.info("switch to %s called off: %s is the target again", self.pending[0], target)
                self.pending = None
            elif self.pending is None or self.pending[0] != target:
                await self._prepare(target)  # every replica has it loaded and warm, or this raises
                self._switch_when_due(target, active)
        except ModelNotFoundError as exc:
            self.not_ready_reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - keep serving the current version; retry at the next poll
            self.not_ready_reason = f"model could not be loaded: {exc}"
            log.warning("model switch failed: %s", exc)

    def _switch_when_due(self, target: ServedModel, active: ServedModel | None) -> None:
        at = self._switch_at(target) if self._switch_at is not None and active is not None else None
        now = self._clock()
        if at is not None and at > now:
            log.info("model %s warm; it takes over from %s in %.1f s", target, active, at - now)
            self.pending = (target, at)
            return
        if at is not None and now - at > self.LATE_WARNING_S:
            log.warning(
                "serving model %s (was %s) %.1f s after the instant every replica was to switch at: this replica "
                "judged with the old version meanwhile; raise switch_delay_s above reload_interval_s plus the time "
                "a version takes to load",
                target,
                active,
                now - at,
            )
        else:
            log.info("serving model %s (was %s)", target, active)
        self.active = target

    def in_service(self) -> list[ServedModel]:
        """Every model this follower may judge with soon: the active one, a pending switch's and the shadow."""
        pending = self.pending[0] if self.pending is not None else None
        return [m for m in (self.active, pending, self.shadow) if m is not None]

    async def run_forever(self, interval_s: Callable[[], float]) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(interval_s())


class StoreAccess:
    """The frame store for the review routes and the repeated-id check: opened on first use, called in threads.

    While the store cannot be opened every call raises :class:`StoreError` (503 with Retry-After), and the
    next call tries again.
    """

    def __init__(self, open_store: Callable[[], FrameStore]):
        self._open = open_store
        self._store: FrameStore | None = None
        self._opening = asyncio.Lock()

    async def store(self) -> FrameStore:
        if self._store is None:
            async with self._opening:
                if self._store is None:
                    self._store = await asyncio.to_thread(self._open)
        return self._store

    async def call(self, method: str, *args, **kwargs):
        """``FrameStore.<method>(*args, **kwargs)`` in a worker thread."""
        store = await self.store()
        return await asyncio.to_thread(getattr(store, method), *args, **kwargs)

    async def find(self, key: tuple[str, str, str]) -> StoredFrame | None:
        return await self.call("find", *key)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
