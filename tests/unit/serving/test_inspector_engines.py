"""Inspector replicas judge with the engine the rule picks, say which one, and switch when told.

The replica class runs here without Ray: model loading, the engine choice and the per-frame decode and
batched forward are plain methods (``_forward``'s dynamic batching is Ray's and is covered by the
integration tests). Two registered copies of the session's tiny model: v0001 with no exports, v0002
with an OpenVINO fp32 export that passed parity.
"""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
from PIL import Image

from inspectline.config import InspectorOptions
from inspectline.errors import EngineError
from inspectline.export import ExportRequest, export_version
from inspectline.registry import ModelRegistry
from inspectline.serving.inspector import FrameJudge, Inspector, judge_prepared, prepare_frame
from inspectline.serving.records import InspectJob, Judgement, ServedModel

PLAIN, EXPORTED = ServedModel("v0001"), ServedModel("v0002")


@pytest.fixture(scope="module")
def registry(trained_run, tmp_path_factory) -> ModelRegistry:
    reg = ModelRegistry(tmp_path_factory.mktemp("inspector-engines") / "models")
    reg.register(trained_run.checkpoint)
    reg.register(trained_run.checkpoint)
    result = export_version(reg, "v0002", ExportRequest(format="openvino", precision="fp32"), actor="test")
    assert result.record.passed, result.table
    return reg


def _inspector(registry: ModelRegistry, **options):
    inspector = Inspector.func_or_class(str(registry.root))  # the replica's class, without Ray
    asyncio.run(inspector.reconfigure(options))
    return inspector


def _frames(n: int = 6) -> list[bytes]:
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _judge(inspector, model: ServedModel, frames: list[bytes]) -> list[Judgement]:
    async def run() -> list[Judgement]:
        predictor = await inspector._predictor(model)
        jobs = [InspectJob(image=f, model=model, camera_id="cam-1") for f in frames]
        prepared = [prepare_frame(predictor, job, {}) for job in jobs]
        return judge_prepared(predictor, prepared)  # type: ignore[arg-type]

    judgements = asyncio.run(run())
    assert all(isinstance(j, Judgement) for j in judgements), judgements
    return judgements


def test_by_default_the_checkpoint_runs_in_fp32_on_any_cpu(registry):
    described = asyncio.run(_inspector(registry).describe(PLAIN))
    engine = described["engine"]
    assert (engine["engine"], engine["precision"], engine["export"]) == ("torch", "fp32", None)
    assert "v0001 has no exports" in engine["reason"]
    assert {j.engine for j in _judge(_inspector(registry), PLAIN, _frames(2))} == {"torch fp32"}


def test_auto_runs_the_passed_export_only_when_it_was_measured_faster(registry):
    record = registry.get("v0002").manifest.exports[0]
    engine = asyncio.run(_inspector(registry).describe(EXPORTED))["engine"]
    if record.speedup is None or record.speedup > 1.0:
        assert (engine["engine"], engine["precision"]) == ("openvino", "fp32")
        assert engine["export"] == record.path and engine["agreement"] == record.parity["test"]["agreement"]
        assert "passed parity" in engine["reason"]
    else:
        assert engine["engine"] == "torch" and "measured" in engine["reason"]


def test_an_export_asked_for_judges_like_the_checkpoint(registry):
    frames = _frames()
    torch_says = _judge(_inspector(registry, engine="torch"), EXPORTED, frames)
    openvino = _inspector(registry, engine="openvino", threads=1)
    openvino_says = _judge(openvino, EXPORTED, frames)
    assert {j.engine for j in openvino_says} == {"openvino fp32"}
    for a, b in zip(torch_says, openvino_says, strict=True):
        assert b.defect_probability == pytest.approx(a.defect_probability, abs=1e-4)
        assert b.verdict == a.verdict and b.views.keys() == a.views.keys()
    assert asyncio.run(openvino.describe(EXPORTED))["engine"]["engine"] == "openvino"


@pytest.mark.parametrize("engine", ["torch", "openvino"])
def test_a_single_thread_forward_counts_its_own_cpu_not_the_replicas_other_threads(registry, engine):
    """The model's CPU per batch (``inspect_inference_cpu_seconds_total``) is what a benchmark subtracts from
    the service's CPU to find the plumbing: a busy thread beside the forward must not be counted as model."""
    stop = threading.Event()

    def busy() -> None:  # another thread of the replica working meanwhile (decoding, HTTP, the event loop)
        while not stop.is_set():
            sum(i * i for i in range(10_000))

    neighbour = threading.Thread(target=busy)
    neighbour.start()
    try:
        judgements = _judge(_inspector(registry, engine=engine, threads=1), EXPORTED, _frames(4))
    finally:
        stop.set()
        neighbour.join()
    first = judgements[0]
    assert first.first_in_batch and first.batch_size == 4
    # one thread cannot spend more CPU than the wall time it ran; the process's clock, with the busy
    # neighbour on the other core, would
    assert 0 < first.inference_cpu_s <= first.inference_s * 1.05 + 1e-3


def test_a_new_engine_setting_reloads_the_versions_warm_and_other_settings_keep_them(registry):
    inspector = _inspector(registry, engine="torch")
    asyncio.run(inspector.describe(EXPORTED))
    assert inspector.loaded_versions() == ["v0002"]
    engine = inspector._models["v0002"][0]
    asyncio.run(inspector.reconfigure({"engine": "torch", "unsure_band": 0.05}))  # verdict rules only
    assert inspector._models["v0002"][0] is engine
    assert inspector._predictors[EXPORTED].unsure_band == 0.05  # rebuilt with the new rule, before any frame
    asyncio.run(inspector.reconfigure({"engine": "openvino"}))
    assert inspector.loaded_versions() == ["v0002"]
    assert inspector._predictors[EXPORTED].engine.name == "openvino"  # reloaded in the new engine, before any frame


def test_a_starting_replica_loads_and_warms_production_and_shadow_before_its_first_frame(trained_run, tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    for _ in range(3):
        registry.register(trained_run.checkpoint)
    registry.promote("v0002", reason="test")
    registry.set_shadow("v0003", reason="test")
    inspector = _inspector(registry, engine="torch")
    assert sorted(inspector.loaded_versions()) == ["v0002", "v0003"]
    # exactly what the gateway asks for, operating point included: its frames find the predictor warm
    in_service = {ServedModel.in_force(registry, "v0002"), ServedModel.in_force(registry, "v0003")}
    assert set(inspector._predictors) == in_service


def test_a_replica_starts_on_an_empty_registry_and_with_a_model_it_cannot_run(trained_run, tmp_path):
    assert _inspector(ModelRegistry(tmp_path / "empty")).loaded_versions() == []
    registry = ModelRegistry(tmp_path / "models")
    registry.register(trained_run.checkpoint)
    registry.promote("v0001", reason="test")
    inspector = _inspector(registry, engine="onnxruntime")  # v0001 has no ONNX export: logged, not raised
    assert inspector.loaded_versions() == []
    judged = asyncio.run(inspector.judge(InspectJob(image=_frames(1)[0], model=PLAIN, camera_id="cam-1")))
    assert judged.kind == "model_unavailable" and "onnx" in judged.detail


def test_an_engine_the_version_cannot_run_is_a_clear_error_not_a_crash(registry):
    inspector = _inspector(registry, engine="onnxruntime")
    with pytest.raises(EngineError, match="onnx"):
        asyncio.run(inspector.describe(EXPORTED))
    judged = asyncio.run(inspector.judge(InspectJob(image=_frames(1)[0], model=EXPORTED, camera_id="cam-1")))
    assert judged.kind == "model_unavailable" and "onnx" in judged.detail


def test_a_model_asked_for_before_the_first_configure_is_loaded_with_its_settings(registry):
    """A gateway that judges its own frames starts its model follower before Serve configures it: the
    follower's prepare waits, and the model it gets runs with the configured settings, not the defaults."""

    async def run() -> dict:
        judge = FrameJudge(registry)
        asked = asyncio.create_task(judge.prepare(EXPORTED))
        await asyncio.sleep(0.05)
        assert not asked.done() and judge.loaded_versions() == []
        await judge.configure(InspectorOptions(engine="torch", tta=False))
        return await asked

    described = asyncio.run(run())
    assert described["engine"]["engine"] == "torch" and described["tta_views"] == ["identity"]
