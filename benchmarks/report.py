"""``python -m benchmarks report [--results DIR] [--readme PATH]``: the targets table.

Reads the result JSONs that exist in the results directory (``benchmarks/results`` by
default): ``live-latency.json``, ``capacity.json``, ``workers.json``, ``catch-up.json``,
``durability.json``, ``slow-listeners.json``, ``rtc-latency.json``, and every subdirectory holding a
``live-latency.json`` or ``slow-listeners.json`` (``one-connection-per-listener/``,
``websocket/``, ``slow-listeners-120s/`` ...), each shown as rows of its own, labelled
from its JSON's config. It prints, and writes into the README between
``<!-- results:start -->`` and ``<!-- results:end -->``:

- the date and machine line, from the JSONs' ``date`` and ``machine`` fields, saying
  when files come from different dates or machines;
- the targets table of the benchmarks issue: one row per target (per setup where a
  scenario was run in several), the measured value from the JSON, the baseline and its
  ratio where the JSON has one, and ``met?`` computed here from those numbers against
  the thresholds below (``-`` where the issue sets none or the point was not measured);
- links to the PNG plots found next to the JSONs.

A missing JSON gives rows saying "not measured (run ``python -m benchmarks NAME``)".
Everything outside the markers is left as it is. If ``--readme`` names a file that does
not exist, it is created with a title and the markers (``python -m benchmarks all``
does that for a results directory other than ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results"
DEFAULT_README = HERE / "README.md"
START = "<!-- results:start -->"
END = "<!-- results:end -->"

#: Scenario -> its JSON's file name, in table order.
FILES = {
    "live-latency": "live-latency.json",
    "capacity": "capacity.json",
    "workers": "workers.json",
    "catch-up": "catch-up.json",
    "durability": "durability.json",
    "slow-listeners": "slow-listeners.json",
    "rtc-latency": "rtc-latency.json",
}
#: Scenarios also read from subdirectories of the results directory (variants).
VARIANT_SCENARIOS = ("live-latency", "slow-listeners")

# The targets (2-core machine, loopback, HTTP/2, one server process).
CPU_US_PER_DELIVERY = 20.0  # <=, at the largest N measured
P99_100_MS = 5.0  # <, with 100 listeners
P99_1000_MS = 20.0  # <, with 1,000 listeners
FIRST_CHUNK_MS = 50.0  # < (p99; the max when too few joins for a p99)
LIVE_EDGE_60S_MS = 200.0  # < (p99 or max), 60 s backlog at full speed
LIVE_P99_MOVE_MS = 5.0  # |during - quiet| <
ACK_P99_MS = 20.0  # <
STORAGE_LIVE_P99_RATIO = 1.10  # sqlite / memory <=: "within 10 %"
# The issue says "unaffected" and "bounded" without a number; these are the report's:
# the same 10 % band as for storage, and a slope difference well under what the known
# unbounded-buffer bug measured (+3.6 to +4.4 MiB/min with 5 stalled listeners).
SLOW_P99_RATIO = 1.10  # healthy p99 stalled / control <=
RSS_SLOPE_MIB_MIN = 1.0  # RSS slope stalled - control <=
# Issue 7 asks for ratios of 1, 2 and 4 workers, no threshold: its rows have no met?.
WORKERS_LIMIT_MS = 50.0  # the p99 limit of the workers scenario's capacity search

HEADER = ("target (issue 4)", "setup", "measured", "baseline (x = ours / baseline)", "met?")


@dataclass
class Source:
    """One result JSON (or its absence)."""

    scenario: str
    path: Path
    rel: str  # path relative to the results directory, for the table
    data: dict[str, Any] | None
    error: str = ""

    @property
    def quick(self) -> bool:
        data = self.data or {}
        command = str(data.get("command", ""))
        return "--quick" in command.split() or bool((data.get("config") or {}).get("quick"))

    @property
    def tag(self) -> str:
        return f"`{self.rel}`" + (" (--quick)" if self.quick else "")


@dataclass
class Row:
    target: str
    setup: str
    measured: str
    baseline: str
    met: str


# -- formatting ---------------------------------------------------------------


def num(x: Any) -> str:
    """About three significant digits; '?' when the JSON has no number."""
    if not isinstance(x, int | float) or isinstance(x, bool):
        return "?"
    if isinstance(x, int):
        return f"{x:,}"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def short(x: Any) -> str:
    """A config value as written: 60.0 -> '60', 1.5 -> '1.5'."""
    return f"{x:g}" if is_num(x) else "?"


def plural(n: Any, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def signed(x: Any) -> str:
    text = num(x)
    return f"+{text}" if isinstance(x, int | float) and x > 0 else text


def met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "no")


def is_num(x: Any) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|---|---|---|---|---|"]
    for r in rows:
        cells = (r.target, r.setup, r.measured, r.baseline, r.met)
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(lines)


# -- loading ------------------------------------------------------------------


def _load(scenario: str, path: Path, results: Path) -> Source:
    rel = path.relative_to(results).as_posix()
    if not path.exists():
        return Source(scenario, path, rel, None)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return Source(scenario, path, rel, None, error=f"{type(exc).__name__}: {exc}")
    if not isinstance(data, dict):
        return Source(scenario, path, rel, None, error="not a JSON object")
    return Source(scenario, path, rel, data)


def discover(results: Path) -> dict[str, list[Source]]:
    """Scenario -> its sources: the results directory's own file first (possibly
    missing), then variants in subdirectories, by name."""
    found: dict[str, list[Source]] = {}
    subdirs = sorted(p for p in results.iterdir() if p.is_dir()) if results.is_dir() else []
    for scenario, name in FILES.items():
        found[scenario] = [_load(scenario, results / name, results)]
        if scenario in VARIANT_SCENARIOS:
            found[scenario] += [
                _load(scenario, d / name, results) for d in subdirs if (d / name).exists()
            ]
    return found


# -- rows per scenario --------------------------------------------------------

RowsFn = Callable[[Source], list[Row]]

#: Scenario -> the targets its rows cover (for "not measured" rows).
TARGETS: dict[str, list[str]] = {
    "live-latency": [
        f"server CPU per delivered chunk <= {CPU_US_PER_DELIVERY:g} us (largest N)",
        f"p99 < {P99_100_MS:g} ms with 100 listeners",
        f"p99 < {P99_1000_MS:g} ms with 1,000 listeners",
        "no loss (lost / reordered / duplicated all 0)",
    ],
    "capacity": ["capacity: live threads (1 talker + 5 listeners) at p99 < 20 ms"],
    "workers": [
        f"workers (issue 7): live threads at p99 < {WORKERS_LIMIT_MS:g} ms, 1 vs 2 vs 4 workers",
        "workers (issue 7): server CPU per delivery (all its processes), 1 vs 2 vs 4 workers",
    ],
    "catch-up": [
        f"catch-up: first chunk < {FIRST_CHUNK_MS:g} ms p99",
        f"catch-up: 60 s backlog to the live edge < {LIVE_EDGE_60S_MS:g} ms (speed 0)",
        f"catch-up: live listeners' p99 moves < {LIVE_P99_MOVE_MS:g} ms",
    ],
    "durability": [
        f"durable ack p99 < {ACK_P99_MS:g} ms",
        "live p99 with storage within 10 % of the no-op (memory) store",
    ],
    "slow-listeners": [
        f"slow listeners: the others' p99 unaffected (stalled / control <= {SLOW_P99_RATIO:g})",
        f"slow listeners: memory bounded (RSS slope stalled - control <= "
        f"{RSS_SLOPE_MIB_MIN:g} MiB/min)",
    ],
    "rtc-latency": [
        "WebRTC (WHIP in, WHEP out) side by side with Janus: RTP arrival p99, as a ratio",
        "WebRTC: server CPU per delivered packet, as a ratio to Janus",
        "WebRTC: no loss (lost / reordered / duplicated / mismatched all 0)",
    ],
}


def live_kind(config: dict[str, Any]) -> str:
    """'h2' or 'ws' from ``config.transport`` (new: the flag; older files: a sentence)."""
    transport = str(config.get("transport") or "h2")
    if transport == "ws" or "websocket" in transport.lower():
        return "ws"
    return "h2"


def live_label(config: dict[str, Any]) -> str:
    if live_kind(config) == "ws":
        return "WebSocket listeners, 1 connection each"
    spc = config.get("streams_per_connection")
    if spc is None:
        return "HTTP/2 listeners"
    if spc == 1:
        return "HTTP/2, 1 connection per listener"
    return f"HTTP/2, up to {spc} streams per connection"


def live_flags(config: dict[str, Any]) -> str:
    if live_kind(config) == "ws":
        return " --transport ws"
    spc = config.get("streams_per_connection")
    return f" --streams-per-conn {spc}" if spc not in (None, 50) else ""


def rows_live(src: Source) -> list[Row]:
    data = src.data or {}
    config: dict[str, Any] = data.get("config") or {}
    results: list[dict[str, Any]] = sorted(data["results"], key=lambda r: r["listeners"])
    if not results:
        raise ValueError("no results")
    ns = [r["listeners"] for r in results]
    setup = f"{live_label(config)}; {src.tag}"
    by_n = {r["listeners"]: r for r in results}
    targets = TARGETS["live-latency"]
    rows: list[Row] = []

    # CPU per delivery at the largest N; the slope per extra listener.
    top = results[-1]
    cpu = top.get("server_cpu_us_per_delivery")
    measured = f"{num(cpu)} us per delivery at N = {top['listeners']}"
    marginal = data.get("marginal_cpu_us_per_listener")
    base = top.get("baseline")
    if isinstance(marginal, dict) and is_num(marginal.get("voxer")):
        lo, hi = marginal.get("between", [ns[0], ns[-1]])
        measured += f"; {num(marginal['voxer'])} us per extra listener (N = {lo} to {hi})"
    elif len(results) >= 2 and all(is_num(r.get("server_cpu_us_per_chunk")) for r in results):
        lo_r, hi_r = results[0], results[-1]
        slope = (hi_r["server_cpu_us_per_chunk"] - lo_r["server_cpu_us_per_chunk"]) / (
            hi_r["listeners"] - lo_r["listeners"]
        )
        measured += (
            f"; {num(slope)} us per extra listener (N = {lo_r['listeners']} to "
            f"{hi_r['listeners']}, from the per-chunk figures)"
        )
    baseline = "-"
    if isinstance(base, dict):
        name = base.get("name", "baseline")
        ratio = (top.get("ratio") or {}).get("cpu_per_delivery")
        baseline = f"{name} {num(base.get('server_cpu_us_per_delivery'))} us, x {num(ratio)}"
        if isinstance(marginal, dict) and name in marginal:
            baseline += (
                f"; per extra listener {name} {num(marginal[name])} us, "
                f"x {num(marginal.get('ratio'))}"
            )
    rows.append(
        Row(
            targets[0],
            setup,
            measured,
            baseline,
            met(cpu <= CPU_US_PER_DELIVERY if is_num(cpu) else None),
        )
    )

    # p99 at 100 and at 1,000 listeners.
    for target, n, limit in ((targets[1], 100, P99_100_MS), (targets[2], 1000, P99_1000_MS)):
        r = by_n.get(n)
        if r is None:
            rows.append(
                Row(
                    target,
                    setup,
                    f"not measured at N = {n:,} (run `python -m benchmarks live-latency"
                    f"{live_flags(config)} --listeners {n}`)",
                    "-",
                    "-",
                )
            )
            continue
        lat = r.get("latency_ms") or {}
        p99 = lat.get("p99")
        measured = (
            f"p99 {num(p99)} ms (p50 {num(lat.get('p50'))}, p99.9 {num(lat.get('p99_9'))}; "
            f"{num(r.get('samples'))} samples)"
        )
        baseline = "-"
        b = r.get("baseline")
        if isinstance(b, dict):
            ratio = (r.get("ratio") or {}).get("latency_p99")
            baseline = (
                f"{b.get('name', 'baseline')} p99 "
                f"{num((b.get('latency_ms') or {}).get('p99'))} ms, x {num(ratio)}"
            )
        rows.append(
            Row(target, setup, measured, baseline, met(p99 < limit if is_num(p99) else None))
        )

    # No loss over every N.
    keys = ("lost", "reordered", "duplicated")

    def sums(rs: list[dict[str, Any]]) -> tuple[list[int], int]:
        totals = [sum(int(r.get(k) or 0) for r in rs) for k in keys]
        errors = sum(len(r.get("errors") or []) for r in rs)
        return totals, errors

    totals, errors = sums(results)
    measured = f"{' / '.join(map(str, totals))} over N = {', '.join(map(str, ns))}" + (
        f"; {errors} errors" if errors else ""
    )
    bases = [r["baseline"] for r in results if isinstance(r.get("baseline"), dict)]
    baseline = "-"
    if bases:
        b_totals, b_errors = sums(bases)
        baseline = f"{bases[0].get('name', 'baseline')} {' / '.join(map(str, b_totals))}" + (
            f"; {b_errors} errors" if b_errors else ""
        )
    rows.append(Row(targets[3], setup, measured, baseline, met(not any(totals) and not errors)))
    return rows


def rows_capacity(src: Source) -> list[Row]:
    data = src.data or {}
    config: dict[str, Any] = data.get("config") or {}
    steps: list[dict[str, Any]] = data["steps"]
    limit = config.get("limit_ms", 20.0)
    threads = data.get("capacity_threads")
    setup = f"SQLite; {src.tag}"
    held = [s for s in steps if s.get("held")]
    if held:
        best = held[-1]
        lat = best.get("live_latency_ms") or {}
        measured = (
            f"{threads} threads ({best.get('listeners')} listeners), "
            f"{num(data.get('deliveries_per_s_at_capacity'))} deliveries/s, "
            f"p99 {num(lat.get('p99'))} ms; server {num(best.get('server_cpu_share'))} cores, "
            f"{num(best.get('server_cpu_us_per_delivery'))} us per delivery"
        )
    else:
        measured = f"{threads} threads: no step held"
    over = [s for s in steps if not s.get("held")]
    if held and not over:
        measured += "; every step held (the largest tried is a lower bound)"
    if over:
        s = over[0]
        lat = s.get("live_latency_ms") or {}
        measured += (
            f"; {s.get('talkers')} threads: p99 {num(lat.get('p99'))} ms, "
            f"lost / dup {s.get('lost')} / {s.get('duplicated')}"
        )
    target = f"capacity: live threads (1 talker + 5 listeners) at p99 < {short(limit)} ms"
    return [Row(target, setup, measured, "-", "-")]


def _workers_label(entry: dict[str, Any]) -> str:
    return f"N = {entry.get('workers')}" + ("" if entry.get("redis") else " without Redis")


def rows_workers(src: Source) -> list[Row]:
    data = src.data or {}
    config: dict[str, Any] = data.get("config") or {}
    limit = config.get("limit_ms", WORKERS_LIMIT_MS)
    entries: list[dict[str, Any]] = list(data["workers"])
    if data.get("alone"):
        entries.append(data["alone"])
    versus = " vs ".join(str(e.get("workers")) for e in data["workers"])
    processes = config.get("processes")
    setup = (
        f"SQLite + Redis, `serve --workers N --redis`, {processes} load processes, "
        f"{short(config.get('duration'))} s steps; {src.tag}"
    )
    carried, cpu = [], []
    ratios_threads, ratios_cpu = [], []
    for e in entries:
        lat = e.get("live_latency_ms") or {}
        carried.append(
            f"{_workers_label(e)}: {e.get('capacity_threads')} threads "
            f"({num(e.get('deliveries_per_s'))} deliveries/s, p50 / p99 / p99.9 "
            f"{num(lat.get('p50'))} / {num(lat.get('p99'))} / {num(lat.get('p99_9'))} ms; "
            + (
                f"{e['first_over_threads']} did not hold)"
                if e.get("first_over_threads")
                else "every step held: a lower bound)"
            )
        )
        cpu.append(
            f"{_workers_label(e)}: {num(e.get('server_cpu_us_per_delivery'))} us "
            f"({num(e.get('server_cpu_share'))} cores) at {e.get('capacity_threads')} threads"
        )
        ratio = e.get("ratio_vs_1") or {}
        if e.get("name") != data.get("reference"):
            ratios_threads.append(f"{_workers_label(e)} x {num(ratio.get('threads_carried'))}")
            ratios_cpu.append(
                f"{_workers_label(e)} x {num(ratio.get('cpu_per_delivery_at_compared_threads'))}"
                f" at {e.get('compared_at_threads') or '?'} threads (same load), x "
                f"{num(ratio.get('cpu_per_delivery_at_capacity'))} at capacity"
            )
    reference = "N = 1 on Redis (one plain serve process)"
    return [
        Row(
            f"workers (issue 7): live threads at p99 < {short(limit)} ms, {versus} workers",
            setup,
            "; ".join(carried),
            f"{reference}: " + ", ".join(ratios_threads),
            "-",
        ),
        Row(
            f"workers (issue 7): server CPU per delivery (all its processes), {versus} workers",
            setup,
            "at capacity: " + "; ".join(cpu),
            f"{reference}: " + ", ".join(ratios_cpu),
            "-",
        ),
    ]


def _stat(summary: dict[str, Any]) -> tuple[str, Any]:
    """p99 when the summary has one (enough samples), else the max, which bounds it."""
    return ("p99", summary["p99"]) if "p99" in summary else ("max", summary.get("max"))


def rows_catch_up(src: Source) -> list[Row]:
    data = src.data or {}
    config: dict[str, Any] = data.get("config") or {}
    result: dict[str, Any] = data["result"]
    groups: list[dict[str, Any]] = result["groups"]
    fast = [g for g in groups if g.get("kind") == "fast"]
    paced = [g for g in groups if g.get("kind") == "paced"]
    setup = f"{config.get('live_listeners', '?')} live listeners; {src.tag}"
    targets = TARGETS["catch-up"]
    rows: list[Row] = []
    loss = (
        f"joins lost / dup / reordered {result.get('join_lost', '?')} / "
        f"{result.get('join_duplicated', '?')} / {result.get('join_reordered', '?')}"
    )

    # First chunk: the scenario's own statistic over all joins, else the groups' worst.
    first = (result.get("targets") or {}).get("first_chunk_p99_under_50ms") or {}
    value = first.get("value_ms")
    if is_num(value):
        measured = f"{num(value)} ms, {first.get('statistic', '?')}; {loss}"
    else:
        stats = [(g["group"], *_stat(g["time_to_first_chunk_ms"])) for g in groups]
        value = max((v for _, _, v in stats if is_num(v)), default=None)
        measured = "; ".join(f"{name}: {s} {num(v)} ms" for name, s, v in stats) + f"; {loss}"
    rows.append(
        Row(
            targets[0], setup, measured, "-", met(value < FIRST_CHUNK_MS if is_num(value) else None)
        )
    )

    # Live edge from a 60 s backlog at full speed; other backlogs for information.
    def edge(g: dict[str, Any]) -> str:
        live = g["time_to_live_edge_ms"]
        s, v = _stat(live)
        return (
            f"backlog {short(g.get('backlog_s'))} s ({g.get('served_from', '?')}): "
            f"p50 {num(live.get('p50'))}, {s} {num(v)} ms over {live.get('samples')} joins"
        )

    sixty = [g for g in fast if g.get("backlog_s") == 60]
    others = "; ".join(edge(g) for g in fast if g not in sixty)
    if sixty:
        _, value = _stat(sixty[0]["time_to_live_edge_ms"])
        measured = edge(sixty[0]) + (f"; {others}" if others else "")
        ok = met(value < LIVE_EDGE_60S_MS if is_num(value) else None)
    else:
        measured = "not measured with a 60 s backlog" + (f"; {others}" if others else "")
        ok = "-"
    rows.append(Row(targets[1], setup, measured, "-", ok))

    # Live listeners' p99 during the speed-0 catch-ups against the gaps before them.
    impact = result.get("live_impact_fast_joins") or {}
    delta = impact.get("p99_delta_ms")
    during, quiet = impact.get("during") or {}, impact.get("quiet_before") or {}
    samples = f"{num(quiet.get('samples'))} quiet / {num(during.get('samples'))} during samples"
    if is_num(delta):
        parts = [
            f"{signed(delta)} ms over speed-0 joins (p99 {num(quiet.get('p99'))} -> "
            f"{num(during.get('p99'))} ms; {samples})"
        ]
    else:
        parts = [f"no p99 delta over speed-0 joins: too few samples for a p99 ({samples})"]

    def moved(g: dict[str, Any]) -> str:
        d = g.get("live_p99_delta_ms")
        return signed(d) if is_num(d) else "no p99"

    parts += [f"{short(g.get('backlog_s'))} s: {moved(g)}" for g in fast]
    parts += [f"paced {short(g.get('speed'))}x: {moved(g)}" for g in paced]
    measured = "; ".join(parts)
    baseline = f"quiet p99 {num(quiet.get('p99'))} ms" if is_num(quiet.get("p99")) else "-"
    rows.append(
        Row(
            targets[2],
            setup,
            measured,
            baseline,
            met(abs(delta) < LIVE_P99_MOVE_MS if is_num(delta) else None),
        )
    )
    return rows


def rows_durability(src: Source) -> list[Row]:
    data = src.data or {}
    config: dict[str, Any] = data.get("config") or {}
    summary: list[dict[str, Any]] = sorted(data["summary"], key=lambda s: s["talkers"])
    runs: list[dict[str, Any]] = data.get("runs") or []
    lost = sum(int(r.get("lost") or 0) for r in runs)
    dup = sum(int(r.get("duplicated") or 0) for r in runs)
    rounds = config.get("rounds")
    targets = TARGETS["durability"]
    ack_rows: list[Row] = []
    live_rows: list[Row] = []
    for s in summary:
        t = s["talkers"]
        setup = f"{plural(t, 'talker')}, worst of {plural(rounds, 'round')}; {src.tag}"
        sq, mem = s.get("sqlite") or {}, s.get("memory") or {}
        ack = sq.get("ack_p99_ms")
        ack_rows.append(
            Row(
                targets[0],
                setup,
                f"ack p99 {num(ack)} ms (p50 {num(sq.get('ack_p50_ms'))}), "
                f"{num(sq.get('acked_chunks_per_s'))} acked chunks/s; lost / dup over all "
                f"runs {lost} / {dup}",
                f"memory store {num(mem.get('ack_p99_ms'))} ms, "
                f"x {num(s.get('ack_p99_ratio_sqlite_over_memory'))}",
                met(ack < ACK_P99_MS if is_num(ack) else None),
            )
        )
        ratio = s.get("live_p99_ratio_sqlite_over_memory")
        live_rows.append(
            Row(
                targets[1],
                setup,
                f"live p99 {num(sq.get('live_p99_ms'))} ms with SQLite",
                f"memory store {num(mem.get('live_p99_ms'))} ms, x {num(ratio)}",
                met(ratio <= STORAGE_LIVE_P99_RATIO if is_num(ratio) else None),
            )
        )
    return ack_rows + live_rows


def rows_slow(src: Source) -> list[Row]:
    data = src.data or {}
    config: dict[str, Any] = data.get("config") or {}
    summary: dict[str, Any] = data["summary"]
    setup = (
        f"N = {config.get('listeners', '?')}, {config.get('stalling_listeners', '?')} stalled, "
        f"{short(config.get('duration_s'))} s runs; {src.tag}"
    )
    targets = TARGETS["slow-listeners"]
    lat = summary["healthy_latency_ms"]
    p99, p50 = lat.get("p99") or {}, lat.get("p50") or {}
    ratio = p99.get("ratio")
    complete = summary.get("stalled_listeners_complete_in_order")
    measured = (
        f"healthy p99 {num(p99.get('stalled'))} ms with stalls (p50 x {num(p50.get('ratio'))}); "
        f"healthy lost / dup / breaks {summary.get('healthy_lost', '?')} / "
        f"{summary.get('healthy_duplicated', '?')} / {summary.get('healthy_sequence_breaks', '?')}"
        f"; stalled listeners complete in order: {met(complete) if complete is not None else '?'}"
    )
    rows = [
        Row(
            targets[0],
            setup,
            measured,
            f"control run p99 {num(p99.get('control'))} ms, x {num(ratio)}",
            met(ratio <= SLOW_P99_RATIO if is_num(ratio) else None),
        )
    ]
    rss = summary["rss_growth_mb_per_min"]
    diff = rss.get("stalled_minus_control")
    measured = (
        f"{signed(diff)} MiB/min (stalled {num(rss.get('stalled'))}, control "
        f"{num(rss.get('control'))} MiB/min over the stall)"
    )
    after = rss.get("after_tail_full") or {}
    if is_num(after.get("stalled")) and is_num(after.get("control")):
        measured += (
            f"; after the tail is full {signed(after['stalled'] - after['control'])} "
            f"({num(after['stalled'])} vs {num(after['control'])})"
        )
    rows.append(
        Row(
            targets[1],
            setup,
            measured,
            f"control run {num(rss.get('control'))} MiB/min",
            met(diff <= RSS_SLOPE_MIB_MIN if is_num(diff) else None),
        )
    )
    return rows


def rows_rtc(src: Source) -> list[Row]:
    """The issue sets no number for WebRTC: it asks for ratios to Janus, so ``met?`` is
    "-" but for loss, which must be none."""
    data = src.data or {}
    targets = TARGETS["rtc-latency"]
    mine = [r for r in data["results"] if r["variant"] == "voxer"]
    receiver = (data.get("config") or {}).get("receiver", "?")
    setup = f"WHIP talker, N WHEP subscribers ({receiver} receivers); {src.tag}"
    p99s, cpus, losses = [], [], []
    for r in mine:
        base = r.get("baseline") or {}
        ratio = r.get("ratio") or {}
        n = r["listeners"]
        p99s.append(
            f"N = {n}: p99 {num(r['latency_ms']['p99'])} ms against "
            f"{num(base.get('latency_ms', {}).get('p99'))}, x {num(ratio.get('latency_p99'))}"
        )
        cpus.append(
            f"N = {n}: {num(r['server_cpu_us_per_delivery'])} us against "
            f"{num(base.get('server_cpu_us_per_delivery'))}, x {num(ratio.get('cpu_per_delivery'))}"
        )
        for who in (r, base):
            losses.append(
                sum(int(who.get(k, 0)) for k in ("lost", "reordered", "duplicated", "mismatched"))
            )
    marginal = data.get("marginal_cpu_us_per_subscriber") or {}
    extra = (
        f"; per extra subscriber {num(marginal.get('voxer'))} us against "
        f"{num(marginal.get('janus'))}, x {num(marginal.get('ratio'))}"
        if marginal
        else ""
    )
    return [
        Row(targets[0], setup, "; ".join(p99s), "Janus 1.1.2 (Streaming plugin)", "-"),
        Row(targets[1], setup, "; ".join(cpus) + extra, "Janus 1.1.2", "-"),
        Row(
            targets[2],
            setup,
            f"{sum(losses)} over every run of both",
            "Janus the same",
            met(sum(losses) == 0),
        ),
    ]


ROWS: dict[str, RowsFn] = {
    "live-latency": rows_live,
    "capacity": rows_capacity,
    "workers": rows_workers,
    "catch-up": rows_catch_up,
    "durability": rows_durability,
    "slow-listeners": rows_slow,
    "rtc-latency": rows_rtc,
}


def rows_for(src: Source) -> list[Row]:
    targets = TARGETS[src.scenario]
    if src.data is None:
        why = f"unreadable `{src.rel}` ({src.error}); " if src.error else ""
        text = f"{why}not measured (run `python -m benchmarks {src.scenario}`)"
        return [Row(t, "-", text, "-", "-") for t in targets]
    try:
        return ROWS[src.scenario](src)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        text = f"`{src.rel}` lacks what this report reads ({type(exc).__name__}: {exc})"
        return [Row(t, src.tag, text, "-", "-") for t in targets]


# -- date, machine, plots -----------------------------------------------------


def _machine_text(m: dict[str, Any]) -> str:
    packages = m.get("packages") or {}
    versions = ", ".join(f"{k} {v}" for k, v in packages.items() if v)
    return (
        f"{m.get('cpu_model') or 'unknown CPU'}, {m.get('cores', '?')} cores, "
        f"Python {m.get('python', '?')}" + (f"; {versions}" if versions else "")
    )


def machine_line(sources: list[Source]) -> str:
    present = [s for s in sources if s.data is not None]
    if not present:
        return "No result files found."
    dates: dict[str, list[str]] = {}
    undated: list[str] = []
    for s in present:
        date = str((s.data or {}).get("date") or "")[:10]
        if date:
            dates.setdefault(date, []).append(f"`{s.rel}`")
        else:
            # Not the file's mtime: a checkout would make that today's date.
            undated.append(f"`{s.rel}`")
    if len(dates) == 1:
        when = f"Measured {next(iter(dates))}."
    elif dates:
        when = "Measured on different dates: " + "; ".join(
            f"{d} ({', '.join(files)})" for d, files in sorted(dates.items())
        )
        when += "."
    else:
        when = "No file records its date."
    if undated:
        when += f" {', '.join(undated)} record{'s' if len(undated) == 1 else ''} no date."
    machines: dict[str, list[str]] = {}
    for s in present:
        text = _machine_text((s.data or {}).get("machine") or {})
        machines.setdefault(text, []).append(f"`{s.rel}`")
    if len(machines) == 1:
        where = f"One machine for all files: {next(iter(machines))}."
    else:
        where = "Different machines: " + "; ".join(
            f"{text} ({', '.join(files)})" for text, files in machines.items()
        )
        where += "."
    return f"{when} {where}"


def plot_links(results: Path, readme: Path) -> str:
    if not results.is_dir():
        return ""
    pngs = sorted(results.glob("*.png")) + sorted(results.glob("*/*.png"))
    links = []
    for png in pngs:
        rel = Path(os.path.relpath(png.resolve(), readme.resolve().parent)).as_posix()
        name = png.relative_to(results).with_suffix("").as_posix()
        links.append(f"[{name}]({rel})")
    return "Plots: " + ", ".join(links) + "." if links else "No plots found."


def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(HERE.parent).as_posix()
    except ValueError:
        return str(path)


def all_rows(found: dict[str, list[Source]]) -> list[Row]:
    """Per scenario, grouped by target (the setups of one target side by side)."""
    rows: list[Row] = []
    for scenario, sources in found.items():
        mine = [row for s in sources for row in rows_for(s)]
        order = {t: k for k, t in enumerate(TARGETS[scenario])}
        rows += sorted(mine, key=lambda r: order.get(r.target, 0))
    return rows


def source_list(sources: list[Source]) -> str:
    lines = []
    for s in sources:
        if s.data is None:
            continue
        data = s.data
        date = str(data.get("date") or "no date recorded").replace("T", " ").replace("Z", " UTC")
        lines.append(f"- {s.tag}: `{data.get('command', '?')}`, {date}")
    return "Sources:\n\n" + "\n".join(lines) if lines else ""


def render(results: Path, readme: Path) -> str:
    """The generated region, without the markers."""
    found = discover(results)
    sources = [s for group in found.values() for s in group]
    parts = [
        f"<!-- generated by `python -m benchmarks report` from {_shown(results)}; "
        "edits between the markers are overwritten -->",
        machine_line(sources),
        table(all_rows(found)),
        source_list(sources),
        plot_links(results, readme),
    ]
    return "\n\n".join(p for p in parts if p)


def replace_region(text: str, region: str) -> str:
    """Replace what lies between the marker lines (each alone on its line, once; a marker
    quoted in prose does not count), keeping the marker lines and all else."""
    lines = text.splitlines(keepends=True)
    starts = [k for k, line in enumerate(lines) if line.strip() == START]
    ends = [k for k, line in enumerate(lines) if line.strip() == END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(
            f"need one {START} line and, after it, one {END} line "
            f"(found {len(starts)} and {len(ends)})"
        )
    head, tail = lines[: starts[0] + 1], lines[ends[0] :]
    if not head[-1].endswith("\n"):
        head[-1] += "\n"
    return "".join(head) + "\n" + region + "\n\n" + "".join(tail)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks report",
        description="Rewrite the targets table in the README from the result JSONs.",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS,
        metavar="DIR",
        help="results directory (default: benchmarks/results)",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        default=DEFAULT_README,
        metavar="PATH",
        help="file whose region between the results markers is rewritten (default: "
        "benchmarks/README.md; created with the markers if it does not exist)",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    region = render(args.results, args.readme)
    print(region)
    if args.readme.exists():
        text = args.readme.read_text()
    else:
        text = f"# Benchmark results\n\n{START}\n{END}\n"
    try:
        new = replace_region(text, region)
    except ValueError as exc:
        print(f"{args.readme}: {exc}; README not written", file=sys.stderr)
        return 2
    if new != text:
        args.readme.parent.mkdir(parents=True, exist_ok=True)
        args.readme.write_text(new)
        print(f"\nwrote the results region of {args.readme}")
    else:
        print(f"\n{args.readme}: results region unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
