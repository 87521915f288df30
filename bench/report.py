"""The markdown tables run.py prints (and saves beside the results JSON)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

NOISY_SPREAD = 0.10
"""Rounds disagreeing by more than this (max-min over median) mark a figure as noisy."""
NOISY_OTHER_CPU = 10.0
"""Other processes using more than this % of the machine during a point: noisy."""
NOISY_PRESSURE = 20.0
"""Tasks waiting for a CPU more than this % of the time (Linux PSI "some"): noisy."""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "–" if value is None else fmt.format(value)


def _noise(row: dict[str, Any]) -> str:
    flags = []
    if row["spread"] > NOISY_SPREAD:
        flags.append(f"spread {row['spread']:.0%}")
    if row.get("other_cpu_pct", 0) > NOISY_OTHER_CPU:
        flags.append(f"others {row['other_cpu_pct']:.0f}% CPU")
    if row.get("cpu_pressure_pct", 0) > NOISY_PRESSURE:
        flags.append(f"CPU pressure {row['cpu_pressure_pct']:.0f}%")
    return ", ".join(flags) or "ok"


def _file_check(row: dict[str, Any]) -> str:
    if row["missing"]:
        return f"**{row['missing']:,} missing**"
    return f"all {row['acked_events']:,}"


def ingest(section: dict[str, Any], title: str) -> list[str]:
    rows = []
    for row in section["summary"]:
        rows.append(
            [
                row["server"],
                str(row["connections"]),
                _num(row["events_per_s"]),
                _num(row.get("ratio"), "{:.2f}×"),
                _num(row["p50_ms"], "{:.2f}"),
                _num(row["p99_ms"], "{:.2f}"),
                _num(row["peak_rss_mb"], "{:.1f}"),
                _num(row.get("cpu_us_per_event"), "{:.1f}"),
                _file_check(row),
                str(row["non_2xx"] + row["socket_errors"]),
                _noise(row),
            ]
        )
    headers = [
        "server",
        "c",
        "events/s",
        "× peer",
        "p50 ms",
        "p99 ms",
        "peak RSS MB",
        "CPU µs/event",
        "acked → in file",
        "errors",
        "noise",
    ]
    return [f"### {title}", "", *_table(headers, rows), ""]


def tail(section: dict[str, Any]) -> list[str]:
    if "skipped" in section:
        return ["### jsonl_tail", "", f"skipped: {section['skipped']}", ""]
    rows = []
    for where in ("in_process", "daemon"):
        figures = section[where]
        if "skipped" in figures:
            rows.append([where, "skipped: " + figures["skipped"], "", "", ""])
            continue
        rows.append(
            [
                where.replace("_", "-"),
                f"{figures['bytes'] / 1e6:,.0f} MB, {figures['lines']:,} lines",
                _num(figures["seconds"], "{:.2f}"),
                _num(figures["mb_per_s"], "{:.1f}"),
                _num(figures["ops_per_s"]),
            ]
        )
    headers = ["where", "file", "seconds", "MB/s", "ops/s"]
    return ["### jsonl_tail", "", *_table(headers, rows), ""]


def cycle(section: dict[str, Any]) -> list[str]:
    if "skipped" in section:
        return ["### Analyzer cycle", "", f"skipped: {section['skipped']}", ""]
    per = section["per_analyzer_median_ms"]
    rows = [
        [
            str(section["ring"]),
            _num(section["first_ms"], "{:.2f}"),
            _num(section["median_ms"], "{:.2f}"),
            _num(section["p90_ms"], "{:.2f}"),
            _num(section["max_ms"], "{:.2f}"),
            ", ".join(f"{name} {ms:.2f}" for name, ms in per.items()),
            _num(section["publish_median_ms"], "{:.2f}"),
            _num(section["stats_median_ms"], "{:.2f}"),
        ]
    ]
    headers = [
        "ring",
        "first cycle ms",
        "median ms",
        "p90 ms",
        "max ms",
        "analyze(), median ms",
        "publish ms",
        "stats() ms",
    ]
    return ["### Analyzer cycle", "", *_table(headers, rows), ""]


def path(section: dict[str, Any]) -> list[str]:
    rows = [
        [name.removesuffix("_per_s"), _num(rate)]
        for name, rate in section.items()
        if name.endswith("_per_s")
    ]
    return ["### Ingest path without HTTP (one core)", "", *_table(["step", "events/s"], rows), ""]


def soak(section: dict[str, Any]) -> list[str]:
    row = [
        _num(section["target_rate"]),
        _num(section["achieved_rate"]),
        _num(section["seconds"], "{:.0f}"),
        _num(section["rss_start_mb"], "{:.1f}"),
        _num(section["rss_end_mb"], "{:.1f}"),
        _num(section["rss_growth_pct"], "{:+.1f}%"),
        _num(section["p50_ms"], "{:.2f}"),
        _num(section["p99_ms"], "{:.2f}"),
        "all" if not section["missing"] else f"**{section['missing']} missing**",
    ]
    headers = [
        "target/s",
        "achieved/s",
        "s",
        "RSS start MB",
        "RSS end MB",
        "growth",
        "p50 ms",
        "p99 ms",
        "acked → in file",
    ]
    return ["### Soak (RSS at a steady rate)", "", *_table(headers, [row]), ""]


def hotspots(section: dict[str, Any]) -> list[str]:
    if "skipped" in section:
        return ["### Profile", "", f"skipped: {section['skipped']}", ""]
    rows = [[name, f"{share}%"] for name, share in section["self_by_function"][:15]]
    incl = [[name, f"{share}%"] for name, share in section["inclusive_by_function"][:20]]
    head = (
        f"py-spy, observer-core (fsync never) at c={section['connections']}, "
        f"{section['samples']:,} samples; raw stacks: `{section['raw_file']}`"
    )
    return [
        "### Profile",
        "",
        head,
        "",
        *_table(["self", "share"], rows),
        "",
        *_table(["inclusive", "share"], incl),
        "",
    ]


SECTIONS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "ingest": lambda s: ingest(s, "POST /event, one event per request"),
    "batch": lambda s: ingest(s, f"POST /events, {s['batch_size']} events per request (NDJSON)"),
    "path": path,
    "tail": tail,
    "cycle": cycle,
    "soak": soak,
    "profile": hotspots,
}


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"## observer-core benchmark, {meta['date']}",
        "",
        f"`{meta['command']}` — commit {meta['commit']}, {meta['cpu']} × {meta['cores']}, "
        f"Python {meta['python']}, {_bun(meta)}{meta['wrk']}; "
        f"load average {meta['loadavg_start']} → {meta.get('loadavg_end', '?')}, "
        f"others used {_num(meta.get('other_cpu_pct'), '{:.0f}')}% of the machine, "
        f"steal {meta.get('steal_pct', 0):.1f}%"
        + (f"; servers and load ran at nice {meta['nice']}" if meta.get("nice") else "")
        + ("; a SCHED_IDLE loop kept the server's core awake" if meta.get("keep_awake") else ""),
        "",
    ]
    for name, render_section in SECTIONS.items():
        if name in results:
            lines += render_section(results[name])
            busy = results[name].get("machine_busy_before_pct")
            if busy is not None:
                lines += [f"(other processes used {busy:.0f}% of the machine just before)", ""]
    return "\n".join(lines)


def _bun(meta: dict[str, Any]) -> str:
    """The peer's runtime, for a run that started it (only the ingest part does)."""
    return f"Bun {meta['bun']}, " if "bun" in meta else ""
