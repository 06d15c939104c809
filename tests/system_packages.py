"""Tests that need a system program (Prometheus, Mosquitto, Chromium) say so in one way, and the run ends
with what was skipped and the one command that enables it.

    @needs("prometheus")
    def test_...

On CI (``CI`` set) nothing is skipped: a missing program fails the test, because CI installs them all
(``.ci/system-packages``, which ``make test`` runs first).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest

# group -> (program that proves it is installed, Debian package)
GROUPS = {
    "prometheus": ("promtool", "prometheus"),
    "mosquitto": ("mosquitto", "mosquitto"),
    "chromium": ("chromium", "chromium"),
    "systemd": ("systemd-analyze", "systemd"),
    "haproxy": ("haproxy", "haproxy"),
}
_PREFIX = "needs system package"


def find_program(name: str) -> str | None:
    """``name`` on PATH, or in /usr/sbin where Debian puts daemons (not on a normal user's PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def available(group: str) -> bool:
    return find_program(GROUPS[group][0]) is not None


def needs(group: str) -> pytest.MarkDecorator:
    _, package = GROUPS[group]
    return pytest.mark.skipif(
        not available(group) and not os.environ.get("CI"),
        reason=f"{_PREFIX} {package} ({group} tests)",
    )


def missing(group: str, reason: str) -> None:
    """Skip (locally) or fail (on CI) a test whose system program is missing, in the summary's terms."""
    _, package = GROUPS[group]
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs {package}: .ci/system-packages)")
    pytest.skip(f"{_PREFIX} {package} ({group} tests): {reason}")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    skipped = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        for group, (_, package) in GROUPS.items():
            if f"{_PREFIX} {package}" in reason:
                skipped[(group, package)] += 1
    if not skipped:
        return
    packages = " ".join(sorted({package for _, package in skipped}))
    terminalreporter.section("skipped: system packages missing")
    for (group, _), count in sorted(skipped.items()):
        terminalreporter.write_line(f"{count:4d} {group} tests")
    terminalreporter.write_line(
        f"enable them all with: sudo apt-get install -y {packages}  (or run `make test` as root)"
    )
