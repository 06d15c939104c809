"""``make demo``'s export step: the demo model is exported for this CPU, each export checked for parity,
and what passed or was refused is said, so the service's ``engine: auto`` has the fastest passed one."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspectline import demo
from inspectline.engines import choose_engine
from inspectline.errors import EngineUnavailableError
from inspectline.hardware import cpu_capabilities
from inspectline.registry import ModelRegistry


@pytest.fixture
def registry(trained_run, tmp_path) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "models")
    reg.register(trained_run.checkpoint)
    return reg


def test_the_demo_exports_for_this_cpu_and_says_what_passed(registry, capsys):
    demo._export(registry, "v0001")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[3/6] exporting v0001 for this CPU")
    exports = {e.precision: e for e in registry.get("v0001").manifest.exports}
    tried = [line.split(":")[0].split()[1] for line in lines[1:] if line.strip().startswith("openvino ")]
    # fp16 (bf16 here) only where the CPU has native bf16; fp32 wherever no faster float export passed
    floating = ["fp16", "fp32"] if cpu_capabilities().bf16 else ["fp32"]
    if "fp16" in exports:
        floating = ["fp16"]
    assert tried == ["int8", *floating]
    for precision in tried:
        line = next(line for line in lines if line.strip().startswith(f"openvino {precision}:"))
        if precision in exports:  # recorded only when it passed: the demo never forces an export
            assert exports[precision].passed and "agreement" in line and "torch fp32 here" in line, line
        else:
            assert "refused" in line and "below the bound" in line, line
    if "fp32" in tried:  # an fp32 export judges like the checkpoint on every CPU
        assert exports["fp32"].parity["test"]["agreement"] == 1.0
    choice = choose_engine(registry.get("v0001"))
    assert choice.engine == "openvino" and choice.export is not None and choice.export.passed


@pytest.mark.parametrize(
    ("refused", "tried", "kept"),
    [
        ({"int8", "fp16"}, ["int8", "fp16", "fp32"], ["fp32"]),  # half precision refused: fp32 instead of torch
        ({"int8"}, ["int8", "fp16"], ["fp16"]),  # half precision passed: fp32 would only be slower
        (set(), ["int8", "fp16"], ["int8", "fp16"]),
    ],
)
def test_on_a_bf16_cpu_a_refused_half_precision_export_falls_back_to_fp32(
    registry, monkeypatch, capsys, refused, tried, kept
):
    from types import SimpleNamespace

    from inspectline.errors import ParityError
    from inspectline.hardware import CpuCapabilities

    calls = []

    def export(_registry, version, request, actor):
        calls.append(request.precision)
        assert request.format == "openvino" and actor == "make demo"
        assert (request.max_drop is not None) == (request.precision == "int8")
        if request.precision in refused:
            msg = (
                f"export openvino-{request.precision} of {version} refused: verdict agreement 98.00% is below the bound"
            )
            raise ParityError(msg)
        record = SimpleNamespace(parity={"test": {"agreement": 1.0}}, images_per_s=100.0, speedup=1.4)
        return SimpleNamespace(record=record)

    zen4 = CpuCapabilities(
        model="test CPU", flags=frozenset({"avx2", "avx512_vnni", "avx512_bf16"}), torch_capability="AVX512"
    )
    monkeypatch.setattr(demo, "cpu_capabilities", lambda: zen4)
    monkeypatch.setattr(demo, "export_version", export)
    demo._export(registry, "v0001")
    out = capsys.readouterr().out
    assert calls == tried
    for precision in tried:
        said = next(line for line in out.splitlines() if line.strip().startswith(f"openvino {precision}:"))
        assert ("agreement 100.00%" in said) == (precision in kept), said
        assert ("refused" in said) == (precision in refused), said


def test_without_openvino_the_demo_says_the_checkpoint_serves_and_how_to_install_it(registry, monkeypatch, capsys):
    def missing(*_args, **_kwargs):
        raise EngineUnavailableError("openvino is not installed; install it with: pip install 'inspectline[openvino]'")

    monkeypatch.setattr(demo, "export_version", missing)
    demo._export(registry, "v0001")
    out = capsys.readouterr().out
    assert "no exports: openvino is not installed" in out and "pip install 'inspectline[openvino]'" in out
    assert "the service runs the checkpoint in torch" in out
    assert not registry.get("v0001").manifest.exports


def test_the_demo_service_reads_the_demos_registry_and_store(tmp_path, monkeypatch):
    """The application args are what the service accepts, and lead it to where the demo trained and registered."""
    from inspectline.cli import profile_path
    from inspectline.config import load_config
    from inspectline.serving.app import AppArgs, service_locations

    monkeypatch.chdir(tmp_path)
    overrides = [f"paths.registry={tmp_path / 'demo-models'}", "store.database_url=sqlite:///frames/demo.db"]
    cfg = load_config(profile_path("demo"), overrides)
    config = demo.service_config(cfg, Path(__file__).resolve().parents[2] / "serve_config.yaml")
    (app,) = config["applications"]
    args = AppArgs.model_validate(app["args"])  # build_app refuses what it does not accept
    where = service_locations(args.config, args.base)
    assert where.registry == (tmp_path / "demo-models").resolve()
    assert where.store.database_url == f"sqlite:///{tmp_path / 'frames' / 'demo.db'}"
    assert where.spool_dir == (tmp_path / cfg.service.spool_dir).resolve()
