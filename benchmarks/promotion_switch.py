"""A promotion under saturating load: when do answers switch to the new version, and does any frame go back?

    python -m benchmarks.promotion_switch --registry models --version v0001 [--to v0002] [--delays 0 15] [--name X]

Works on a copy of the two versions in a throwaway registry (the registry given is never promoted in):
``--version`` starts in production and ``--to`` is promoted under load; without ``--to`` the first
version's checkpoint is registered again, with no exports, so the new version is built in torch under
load (the slow case for a replica to warm). Each turn deploys the service afresh on one local Ray, so
the new version is not loaded anywhere before its promotion:

* ``inspector``: ``serve_config.yaml``, 2 Inspector replicas behind one Gateway, which switches them all
  at one request boundary;
* ``gateway/D``: ``deploy/serve_config.gateway-judges.yaml``, 2 Gateway replicas that judge their own
  frames, each following the registry on its own poll, with ``switch_delay_s`` D (0: each switches once
  warm; D > 0: all at the registry's time of the promotion plus D).

Clients post cells back to back (a new connection per post, so the front spreads them over the
replicas) for a few seconds, the promotion is made, and they go on until every client has had answers
from the new version. Recorded per turn: seconds from the promotion to the first answer from the new
version, posts sent after that first answer which the old version judged (0 when every replica
switched at one instant), clients whose answers went from the new version back to the old one, and
errors.

Writes ``benchmarks/results/promotion_switch.json`` (or ``promotion_switch_<name>.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info, save_result
from serve_layouts import _wait_for_layout, layout_settings
from serve_throughput import _cpu_flags, _serve_config

from inspectline.config import DataConfig
from inspectline.data import load_samples
from inspectline.registry import ModelRegistry
from inspectline.serving.deploy import deploy, start_local_ray, stop_local_ray
from inspectline.serving.ingress import choose_ingress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", type=Path, default=Path("models"))
    parser.add_argument("--version", default="production", help="the version in production before the promotion")
    parser.add_argument("--to", default=None, help="the version promoted (default: the first one's weights again)")
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 15.0], help="gateway layout switch_delay_s")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--before-s", type=float, default=8.0, help="load before the promotion")
    parser.add_argument("--port", type=int, default=8012)
    parser.add_argument("--name", default=None, help="the result file: promotion_switch_NAME.json")
    args = parser.parse_args()
    source = ModelRegistry(args.registry)
    first = source.resolve(args.version).parent.name
    bodies = [s.path.read_bytes() for s in load_samples(DataConfig())[:16]]
    turns = [("inspector", 0.0)] + [("gateway", d) for d in args.delays]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        address = start_local_ray(num_cpus=os.cpu_count() or 1, ingress=choose_ingress("auto", dict(os.environ)))
        try:
            for n, (judge, delay) in enumerate(turns):
                work = Path(tmp) / f"turn-{n}"
                registry, old, new = _throwaway_registry(source, first, args.to, work / "models")
                results.append(_turn(args, judge, delay, registry, old, new, bodies, address, work))
                print(_row(results[-1]), flush=True)
        finally:
            stop_local_ray()
    result = {
        "version": first,
        "to": args.to or f"{first}'s checkpoint re-registered (no exports)",
        "clients": args.clients,
        "turns": results,
        "machine": machine_info() | {"cpu_flags": _cpu_flags()},
    }
    out = save_result("promotion_switch" + (f"_{args.name}" if args.name else ""), result)
    print(
        "\n| layout | switch_delay_s | answers | promotion to first new answer | old answers to posts sent after it "
        "| clients back on the old version | errors |"
    )
    print("|---|---|---|---|---|---|---|")
    for t in results:
        delay = "-" if t["switch_delay_s"] is None else f"{t['switch_delay_s']:g}"
        print(
            f"| {t['judge']} | {delay} | {t['answers']} | {t['first_new_after_promotion_s']:.1f} s | "
            f"{t['old_after_first_new']} | {t['clients_back_on_old']} | {t['errors']} |"
        )
    print(f"wrote {out}")


def _throwaway_registry(source: ModelRegistry, first: str, to: str | None, root: Path) -> tuple[Path, str, str]:
    """A registry holding copies of ``first`` (in production) and ``to`` (or ``first``'s checkpoint again)."""
    root.mkdir(parents=True)
    for name in filter(None, (first, to)):
        shutil.copytree(source.get(name).path, root / name)
    registry = ModelRegistry(root)
    new = to or registry.register(registry.get(first).checkpoint).name
    registry.promote(first, reason="promotion_switch benchmark: before")
    return root, first, new


def _turn(
    args: argparse.Namespace,
    judge: str,
    delay: float,
    registry_root: Path,
    old: str,
    new: str,
    bodies: list[bytes],
    address: str,
    work: Path,
) -> dict:
    from ray import serve

    config = _serve_config(layout_settings(args.port, judge), registry_root, old, work)
    gateway = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Gateway")
    gateway["user_config"].update({"model": "production", "switch_delay_s": delay})
    if "inspectline" in serve.status().applications:  # fresh replicas: the new version is loaded nowhere before
        serve.delete("inspectline")  # its promotion
    deploy(config, address)
    url = f"http://127.0.0.1:{args.port}"
    _wait_for_layout(url, judge)
    answers: list[list[tuple[float, float, str]]] = [[] for _ in range(args.clients)]
    errors: list[str] = []
    stop = threading.Event()

    def client(k: int) -> None:
        n = 0
        while not stop.is_set():
            sent = time.time()
            try:
                r = httpx.post(
                    f"{url}/v1/frames",
                    content=bodies[(k + n) % len(bodies)],
                    headers={"Content-Type": "image/png"},
                    params={"line_id": "switch", "camera_id": f"cam-{k}"},
                    timeout=60,
                )
            except httpx.HTTPError as exc:
                errors.append(str(exc))
                continue
            n += 1
            if r.status_code == 200:
                answers[k].append((sent, time.time(), r.json()["model_version"]))
            else:
                errors.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(args.clients)]
    for t in threads:
        t.start()
    time.sleep(args.before_s)
    promoted = time.time()
    ModelRegistry(registry_root).promote(new, reason="promotion_switch benchmark")
    deadline = promoted + delay + 120
    while time.time() < deadline and not all(sum(v == new for *_, v in a) >= 20 for a in answers):
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    flat = [a for client_answers in answers for a in client_answers]
    first_new = min((answered for _, answered, v in flat if v == new), default=float("nan"))
    return {
        "judge": judge,
        "switch_delay_s": delay if judge == "gateway" else None,
        "answers": len(flat),
        "errors": len(errors),
        "first_errors": errors[:3],
        "first_new_after_promotion_s": first_new - promoted,
        "last_old_sent_after_promotion_s": max((s for s, _, v in flat if v == old), default=promoted) - promoted,
        "old_after_first_new": sum(1 for s, _, v in flat if v == old and s > first_new),
        "clients_back_on_old": sum(any(a[2] == new and b[2] == old for a, b in itertools.pairwise(c)) for c in answers),
        "engine_after": httpx.get(f"{url}/v1/model", timeout=30).json()["engine"],
    }


def _row(t: dict) -> str:
    return (
        f"{t['judge']:<9} delay {t['switch_delay_s'] or 0:g} s: {t['answers']} answers, first new "
        f"{t['first_new_after_promotion_s']:.1f} s after the promotion, {t['old_after_first_new']} old answers to "
        f"posts sent after it, {t['clients_back_on_old']} clients back on the old version, {t['errors']} errors"
    )


if __name__ == "__main__":
    main()
