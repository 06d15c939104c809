"""The gateway-cost benchmark measures what it says: the real app, served, against a bare HTTP floor."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.gateway_app import VARIANTS, measure

pytestmark = pytest.mark.integration


def test_the_benchmark_serves_the_gateway_app_and_the_floor_and_charges_each_its_own_cpu():
    args = argparse.Namespace(frames=200, rounds=1, batch=8, concurrency=2, baseline=None)
    result = measure(args)  # raises if any post is not answered 200

    assert [row["posts"] for row in result["rows"]] == ["single", "batch of 8"]
    for row in result["rows"]:
        app, floor = (row[v] for v in VARIANTS)
        assert app["cpu_ms_per_frame"] > 0 and floor["cpu_ms_per_frame"] > 0
        assert app["frames_per_s"] > 0 and floor["p50_ms"] <= floor["p99_ms"]
        # routing, auth, hashing, the store lookup and the journal are work the bare floor does not do
        assert row["app_over_floor"] > 1
    assert result["machine"]["cpu_flags"] is not None
