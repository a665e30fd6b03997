"""Under CI (``CI`` set), a skipped test is a failed test unless its skip is on the allow-list.

A pytest plugin (loaded by the root ``conftest.py``): PostgreSQL, the MLflow server, Chromium,
Reuters-21578, Fashion-MNIST and the packages of the dev extra must all be there in CI, so a
test that skips because one is missing fails the run instead of passing it quietly. The
allowed skips:

- a README/docs code block marked ``<!--pytest.mark.skip(reason="...")-->`` (with a reason):
  it trains, serves until stopped, needs Docker or a GPU; pytest-codeblocks collects it;
- a test whose skip reason starts with one of :data:`ALLOWED_REASONS` (tests that need a GPU,
  which CI machines do not have).

Every other skip, whether at collection (``importorskip`` at module level), in a fixture or a
``skipif`` (set-up) or in the test itself, is reported as a failure naming its reason.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

ALLOWED_REASONS = ("needs a GPU",)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


def allowed(item: pytest.Item | None, reason: str) -> bool:
    if reason.startswith(ALLOWED_REASONS):
        return True
    if item is None or type(item).__name__ != "TestBlock":
        return False
    mark = item.get_closest_marker("skip")
    return mark is not None and bool(mark.kwargs.get("reason") or mark.args)


def _fail(report: Any, reason: str) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI: {reason}\n"
        "CI must run every test: install or start what it needs (see .ci/run, Makefile), "
        "or, for a GPU-only test, start its skip reason with one of "
        f"{ALLOWED_REASONS} (tests/ci_skips.py)"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = skip_reason(report)
        if not allowed(item, reason):
            _fail(report, reason)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if in_ci() and report.skipped:
        _fail(report, skip_reason(report))
    return report
