"""Inference engines benchmark: images/s of every engine x precision this machine runs, in one process.

    python benchmarks/inference_engines.py --registry /tmp/models --version v0001   # a trained demo model
    python benchmarks/inference_engines.py --quick                                   # fewer repeats
    python benchmarks/inference_engines.py --device cuda --name inference_engines_cuda  # on a GPU

Two models, batch 1 and 8 (images per engine call, the network only: no decoding or preprocessing):

* ``resnet50@224``: ResNet50 at 224 px, gray, random weights (the size of the full recipe);
* ``demo``: the demo model as ``inspectline/profiles/demo.yaml`` builds it (today ResNet18 at a quarter
  of the width, 192 px, gray; random weights). With ``--version`` it is that trained version
  of the registry, exported with ``inspect export``'s own code, so its rows carry the verdict
  agreement with PyTorch fp32 on the ELPV test split (flip TTA, the threshold in force) and the
  accuracy section the ROC-AUC and recall change. Without it, random weights and no agreement.

Engines: torch fp32 (channels_last), torch bf16 autocast (only on CPUs with native bf16), OpenVINO
fp32 / fp16 (FP16 IR at the plugin's default precision: bf16 with AMX, f32 on AVX2) / bf16 (native
only) / INT8 (NNCF), ONNX Runtime fp32 / INT8 (NNCF). INT8 of the random-weight model is calibrated
on ELPV training frames. Every figure is the best of ``--repeats`` runs with the engines interleaved,
so contention from other processes hits them alike; the load average before and after is recorded
and the run is marked busy when the load before it exceeded half the cores (the load after counts its own threads).

With ``--device cuda`` it measures the torch engine on the GPU instead: fp32, fp16 and bf16 autocast
(where the GPU has bf16), batch 1, 8 and 64 (a GPU needs large batches to fill), cuDNN's autotuner on;
each call includes copying the batch to the GPU and the outputs back, as serving does. Those rows
carry ``device`` and their ``speedup_vs_torch_fp32`` is against torch fp32 on the same GPU; the exported
engines are CPU runtimes and are not run there.

Writes ``benchmarks/results/inference_engines.json``: ``rows`` of ``{engine, precision, arch,
image_size, batch, images_per_s, speedup_vs_torch_fp32, agreement}`` plus the machine with CPU flags.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from machine import machine_info, save_result

from inspectline.card import backbone_name
from inspectline.cli import profile_path
from inspectline.config import DataConfig, load_config
from inspectline.data import Preprocessing, compute_normalization, load_images, load_samples, split_samples
from inspectline.engines import FORMATS, TorchEngine, images_per_second, require_runtime, runtime_installed
from inspectline.engines.torch_engine import torch_precisions
from inspectline.export import ExportRequest, _LogitsAndEmbedding, export_version, split_frames
from inspectline.hardware import cpu_capabilities
from inspectline.model import ModelCard, build_model, load_checkpoint
from inspectline.parity import SetParity
from inspectline.registry import ModelRegistry

BATCHES = (1, 8)
CUDA_BATCHES = (1, 8, 64)
EXPORTS = [("openvino", "fp32"), ("openvino", "fp16"), ("openvino", "bf16"), ("openvino", "int8")]
EXPORTS += [("onnx", "fp32"), ("onnx", "int8")]
ENGINE_OF = {"openvino": "openvino", "onnx": "onnxruntime"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", type=Path, help="registry holding a trained demo model")
    parser.add_argument("--version", help="the trained demo version (default: latest in --registry)")
    parser.add_argument("--repeats", type=int, default=7, help="best of this many interleaved runs")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads per engine")
    parser.add_argument("--calibration-frames", type=int, default=300, help="INT8 calibration frames")
    parser.add_argument("--quick", action="store_true", help="3 repeats, 100 calibration frames")
    parser.add_argument("--name", default="inference_engines", help="results file: benchmarks/results/NAME.json")
    parser.add_argument(
        "--device", default="cpu", help="cpu (every engine) or cuda / cuda:N (the torch engine on that GPU)"
    )
    parser.add_argument(
        "--models", default="resnet50,demo", help="comma-separated: resnet50 (random weights), demo (trained if given)"
    )
    args = parser.parse_args()
    models = set(args.models.split(","))
    if args.quick:
        args.repeats, args.calibration_frames = 3, 100
    torch.set_num_threads(args.threads)
    caps = cpu_capabilities()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="inference-engines-"))

    rows, accuracy = [], None
    if args.device != "cpu":
        rows = _measure_cuda(models, args)
    elif "demo" in models and args.registry is not None:
        registry = ModelRegistry(args.registry)
        name = args.version or registry.names()[-1]
        engines, agreement, accuracy = _engines_for_version(registry, name, args, caps)
        card = registry.get(name).card
        rows += _measure(card.backbone, card.preprocessing.image_size, engines, args.repeats, agreement=agreement)
    elif "demo" in models:
        demo, arch, size = _demo_model()
        engines = _engines_for_random(
            demo, _elpv_calibration(size, args.calibration_frames), work / "demo", args.threads, caps
        )
        rows += _measure(arch, size, engines, args.repeats, agreement=None)
    if "resnet50" in models and args.device == "cpu":
        random_model = build_model("resnet50", in_channels=1).eval()
        calibration = _elpv_calibration(224, args.calibration_frames)
        engines = _engines_for_random(random_model, calibration, work / "resnet50", args.threads, caps)
        rows += _measure("resnet50", 224, engines, args.repeats, agreement=None)

    load_after = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    result = {
        "machine": machine_info() | caps.to_dict(),
        "load_average_1m": {"before": load_before, "after": load_after},
        # other work on the machine when the run began; the load after counts this run's own threads
        "busy": load_before > cores / 2,
        "threads": args.threads,
        "repeats": args.repeats,
        "calibration_frames": args.calibration_frames,
        "runtimes": {m: _version_of(m) for m in ("openvino", "onnxruntime", "nncf")},
        "rows": rows,
        "accuracy": accuracy,
    }
    path = save_result(args.name, result)
    _print_table(result)
    print(f"\nwritten to {path}")


def _engines_for_random(model, calibration: np.ndarray, folder: Path, threads: int, caps) -> dict:
    """Exports of a random-weight model in every available format and precision, straight from the formats."""
    folder.mkdir(parents=True)
    engines = {("torch", "fp32"): TorchEngine(model, threads=threads)}
    if caps.bf16:
        engines[("torch", "bf16")] = TorchEngine(model, precision="bf16", threads=threads)
    example = torch.from_numpy(calibration[:2])
    for fmt_name, precision in EXPORTS:
        fmt = FORMATS[fmt_name]
        if not _available(fmt_name, precision, caps):
            continue
        graph = fmt.convert(_LogitsAndEmbedding(model).eval(), example)
        if precision == "int8":
            nncf = require_runtime("nncf")
            items = [calibration[i : i + 1] for i in range(len(calibration))]
            graph = nncf.quantize(graph, nncf.Dataset(items, fmt.quantization_input), subset_size=len(items))
        target = folder / f"{fmt_name}-{precision}"
        target.mkdir()
        engines[(ENGINE_OF[fmt_name], precision)] = fmt.open(fmt.save(graph, target, precision), precision, threads)
    return engines


def _demo_model() -> tuple[torch.nn.Module, str, int]:
    """The demo profile's network with random weights, its backbone name (``resnet18 x0.25``) and input side."""
    cfg = load_config(profile_path("demo"))
    m = cfg.model
    model = build_model(
        m.arch, in_channels=1, head_dims=m.head_dims, head_dropout=m.head_dropout, pooling=m.pooling, width=m.width
    )
    return model.eval(), backbone_name(m.arch, m.width), cfg.data.image_size


def _measure_cuda(models: set[str], args) -> list[dict]:
    """The torch engine on the GPU in every precision it runs there; the demo model trained if given."""
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels, as a server would
    named = []
    if "demo" in models:
        if args.registry is not None:
            registry = ModelRegistry(args.registry)
            version = registry.get(args.version or registry.names()[-1])
            model, card = load_checkpoint(version.checkpoint)[0], version.card
            named.append((model, card.arch, card.preprocessing.image_size))
        else:
            named.append(_demo_model())
    if "resnet50" in models:
        named.append((build_model("resnet50", in_channels=1), "resnet50", 224))
    rows = []
    for model, arch, size in named:
        engines = {
            ("torch", precision): TorchEngine(model, precision=precision, device=device)
            for precision in torch_precisions(device, cpu_capabilities())
        }
        measured = _measure(arch, size, engines, args.repeats, agreement=None, batches=CUDA_BATCHES)
        rows += [row | {"device": f"{device.type}: {torch.cuda.get_device_name(device)}"} for row in measured]
    return rows


def _engines_for_version(registry: ModelRegistry, name: str, args, caps) -> tuple[dict, dict, dict]:
    """The trained version exported with ``inspect export``'s code; agreement from each export's parity."""
    version = registry.get(name)
    model, _ = load_checkpoint(version.checkpoint)
    engines = {("torch", "fp32"): TorchEngine(model, threads=args.threads)}
    agreement = {("torch", "fp32"): 1.0}
    accuracy = {"version": name, "split": "test", "tta_views": list(version.card.tta_views), "exports": {}}
    if caps.bf16:
        engines[("torch", "bf16")] = TorchEngine(model, precision="bf16", threads=args.threads)
    passed = {(e.format, e.precision): e for e in version.manifest.exports if e.passed and not e.forced}
    for fmt_name, precision in EXPORTS:
        if not _available(fmt_name, precision, caps):
            continue
        key = (ENGINE_OF[fmt_name], precision)
        record = passed.get((fmt_name, precision))
        reused = record is not None
        if reused:
            # An export that passed parity may be what the service runs (`make demo`'s accuracy-controlled
            # INT8, say): measure it as it is rather than replace it with a forced plain export.
            print(f"{name}: measuring the {fmt_name}-{precision} export already recorded (passed parity)")
            test = SetParity.model_validate(record.parity["test"])
        else:
            request = ExportRequest(
                format=fmt_name, precision=precision, force=True, calibration_frames=args.calibration_frames
            )
            result = export_version(registry, name, request, actor="benchmarks/inference_engines.py")
            print(result.table)
            record, test = result.record, result.report.test
        engines[key] = FORMATS[fmt_name].open(version.path / record.path, precision, args.threads)
        agreement[key] = test.agreement
        accuracy["exports"][f"{fmt_name}-{precision}"] = {
            "frames": test.frames,
            "agreement": test.agreement,
            "passed": record.passed,
            "reused": reused,
            "quantization": record.quantization,
            "max_abs_dp": test.max_abs_dp,
            "mean_abs_dp": test.mean_abs_dp,
            "roc_auc_torch_fp32": test.roc_auc_reference,
            "roc_auc_change": test.roc_auc_change,
            "recall_torch_fp32": test.recall_reference,
            "recall_change": test.recall_change,
        }
    return engines, agreement, accuracy


def _measure(
    arch: str, size: int, engines: dict, repeats: int, *, agreement: dict | None, batches: tuple[int, ...] = BATCHES
) -> list[dict]:
    rows = []
    channels = 1
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, channels, size, size)).astype(np.float32)
        runners = {key: engine.run for key, engine in engines.items()}
        speed = images_per_second(runners, x, repeats=repeats)
        base = speed[("torch", "fp32")]
        for (engine, precision), ips in speed.items():
            rows.append(
                {
                    "engine": engine,
                    "precision": precision,
                    "arch": arch,
                    "image_size": size,
                    "batch": batch,
                    "images_per_s": round(ips, 2),
                    "speedup_vs_torch_fp32": round(ips / base, 2),
                    "agreement": None if agreement is None else agreement.get((engine, precision)),
                }
            )
            print(f"{arch}@{size} batch {batch}: {engine} {precision}: {ips:.1f} images/s ({ips / base:.2f}×)")
    return rows


def _elpv_calibration(size: int, frames: int) -> np.ndarray:
    """ELPV training frames preprocessed at ``size``, normalised with their own statistics."""
    cfg = DataConfig(source="elpv", image_size=size)
    train = split_samples(load_samples(cfg), test_size=cfg.test_size, val_size=cfg.val_size, seed=cfg.seed).train
    picked = [train[i] for i in sorted(np.random.default_rng(0).choice(len(train), min(frames, len(train)), False))]
    mean, std = compute_normalization(load_images(picked, "gray"), size)
    card = ModelCard(
        arch="resnet50",
        class_names=("ok", "defective"),
        head_dims=(512, 256),
        head_dropout=(0.5, 0.3, 0.2),
        preprocessing=Preprocessing(image_size=size, color_mode="gray", mean=mean, std=std),
    )
    images, _ = split_frames(picked, card)
    return images.numpy()


def _available(fmt_name: str, precision: str, caps) -> bool:
    if not runtime_installed(ENGINE_OF[fmt_name]) or (precision == "int8" and not runtime_installed("nncf")):
        return False
    return precision != "bf16" or caps.bf16


def _version_of(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def _print_table(result: dict) -> None:
    m = result["machine"]
    busy = "BUSY" if result["busy"] else "quiet"
    load = result["load_average_1m"]
    print(f"\n{m['cpu']} ({', '.join(m['cpu_flags'])}), {result['threads']} threads, best of {result['repeats']}")
    if m.get("gpu"):
        print(f"GPU: {m['gpu']}, torch {m['torch']}")
    print(f"machine {busy}: 1-min load average {load['before']:.1f} before, {load['after']:.1f} after\n")
    print("| model | batch | engine | precision | images/s | × torch fp32 | agreement |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        agreement = "-" if r["agreement"] is None else f"{r['agreement']:.2%}"
        engine = f"{r['engine']} ({r['device']})" if "device" in r else r["engine"]
        print(
            f"| {r['arch']} @ {r['image_size']} | {r['batch']} | {engine} | {r['precision']} "
            f"| {r['images_per_s']:.1f} | {r['speedup_vs_torch_fp32']:.2f} | {agreement} |"
        )
    if result["accuracy"]:
        a = result["accuracy"]
        print(f"\nAccuracy against torch fp32, {a['version']} on the ELPV {a['split']} split (flip TTA):")
        for label, e in a["exports"].items():
            print(
                f"  {label}: agreement {e['agreement']:.2%} over {e['frames']} frames, max |Δp| {e['max_abs_dp']:.4f}, "
                f"ROC-AUC {e['roc_auc_change']:+.4f}, recall {e['recall_change']:+.4f}"
                f"{'' if e['passed'] else '  (below the parity bound)'}"
            )


if __name__ == "__main__":
    main()
