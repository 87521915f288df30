"""One-line, Slack-compatible summaries of records (``format = "slack"``)."""

from __future__ import annotations

from typing import Any

__all__ = ["slack_text"]

MAX_CHARS = 500


def slack_text(kind: str, data: Any) -> str:
    """``[kind] summary`` on one line, at most 500 characters, with Slack's ``&<>``
    escaped so a client-written string cannot ping a channel or forge a link."""
    text = " ".join(f"[{kind}] {_summary(kind, data)}".split())
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS - 1] + "…"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _summary(kind: str, data: Any) -> str:
    if not isinstance(data, dict):
        return str(data)
    if kind == "alert":
        return _alert(data)
    if "operation" in data:  # a log entry: diagnosis, playbook
        return f"{data['operation']}: {data.get('result', '')}"
    if "sig_hash" in data and "cluster_size" in data:  # an escalation row
        return (
            f"sig_hash {data['sig_hash']}: {data['cluster_size']} failures at "
            f"{data.get('cluster_endpoint')} (run {data.get('llm_team_run_id')})"
        )
    if "endpoint" in data and "success" in data:  # an op
        outcome = "ok" if data["success"] else f"failed: {data.get('error', '?')}"
        return f"{data.get('source', '?')} {data['endpoint']} {outcome}"
    return ", ".join(f"{key}={value}" for key, value in data.items())


def _alert(data: dict[str, Any]) -> str:
    state = str(data.get("state", "?")).upper()
    evaluations = data.get("evaluations", 0)
    text = (
        f"{state} {data.get('rule')}: {data.get('when')} = {data.get('value')} "
        f"(threshold {data.get('threshold')}, window {data.get('window_secs')}s, "
        f"since {data.get('since')}, {evaluations} evaluation{'s' if evaluations != 1 else ''})"
    )
    errors = data.get("sample_errors") or []
    if errors:
        text += " e.g. " + " | ".join(str(error) for error in errors)
    return text
