"""ctx.report_check: the one "report a dependency's health when it changes" (issue 20)."""

from __future__ import annotations

from pathlib import Path

from observer_core.testing import make_context


def test_a_check_is_reported_when_it_changes_and_keeps_its_since(tmp_path: Path) -> None:
    ctx = make_context(tmp_path)
    assert ctx.report_check("db", False, error="refused") is True
    first = dict(ctx.status["checks"]["db"])
    assert first["healthy"] is False and first["error"] == "refused"
    ctx.status["checks"]["db"]["since"] = "2026-01-01T00:00:00.000Z"  # as if long ago
    assert ctx.report_check("db", False, error="refused again") is False
    assert ctx.status["checks"]["db"]["since"] == "2026-01-01T00:00:00.000Z"
    assert ctx.status["checks"]["db"]["error"] == "refused"
    assert ctx.report_check("db", True) is True
    assert ctx.status["checks"]["db"]["healthy"] is True
    assert "error" not in ctx.status["checks"]["db"]


def test_the_first_report_is_always_written(tmp_path: Path) -> None:
    ctx = make_context(tmp_path)
    assert ctx.report_check("db", True, url="http://db") is True
    assert ctx.status["checks"]["db"]["url"] == "http://db"
