"""Renders results: the terminal table, the markdown figures, the PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _met(flag: Any) -> str:
    return "met" if flag is True else "missed" if flag is False else "-"


def _ratio(s: dict[str, Any]) -> str:
    """The pooled ratio, and the range of the turns' own where the sides took turns."""
    turns = s.get("turn_ratios")
    spread = f" (turns {min(turns):.2f}-{max(turns):.2f})" if turns else ""
    return f"{s['ceiling_ratio']:.3f}{spread}"


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(scenario, Ledger, baseline, ratio, target/verdict) for every figure present."""
    out: list[tuple[str, str, str, str, str]] = []

    def lat(s: dict[str, Any]) -> str:
        p = f"{s['p50_ms']:.1f}/{s['p95_ms']:.1f}/{s['p99_ms']:.1f}"
        size = f", answers {s['answer_bytes']} B" if s.get("answer_bytes") else ""
        return f"{s['throughput_per_s']:.0f}/s p50/95/99 {p} ms{size}"

    if "a_deposits_spread" in r:
        c = r["ceiling"]
        a, e, b, d = (
            r["a_deposits_spread"],
            r["e_get_account"],
            r["b_hot_account"],
            r["d_write_then_read"],
        )

        def against_ceiling(scenario: str, s: dict[str, Any], base: str) -> None:
            out.append(
                (
                    scenario,
                    lat(s),
                    "ceiling " + lat(c[base]),
                    _ratio(s),
                    f"{s['target']}: {_met(s['met'])}",
                )
            )

        against_ceiling("(a) deposits, 10k accounts", a, "deposit")
        against_ceiling("(e) GetAccount", e, "get_account")
        listed = r.get("e_list_transactions")
        if listed:
            page = f"(e) ListTransactions, a page of {listed['page_size']}"
            against_ceiling(page, listed, "list_transactions")

        def floor(scenario: str, f: dict[str, Any], ours: str, base: str, reach: str) -> None:
            out.append(
                (
                    scenario,
                    lat(f) + f" (Ledger's {ours} at {f['ledger_ratio']:.3f} of it)",
                    "ceiling " + lat(c[base]),
                    _ratio(f),
                    reach,
                )
            )

        if "a_append_floor" in r:
            floor(
                "(a) floor: gRPC + durable append, no domain, no views",
                r["a_append_floor"],
                "(a)",
                "deposit",
                "what (a) could reach without Ledger's domain and views",
            )
        if "a_projector_paused" in r:
            floor(
                "(a) the command path alone: the projector paused for the window",
                r["a_projector_paused"],
                "(a)",
                "deposit",
                "what (a) reaches when the views' upkeep does not share the CPUs",
            )
        if "e_page_floor" in r:
            floor(
                "(e) floor: gRPC + the same page read from the views",
                r["e_page_floor"],
                "ListTransactions",
                "list_transactions",
                "what ListTransactions could reach without Ledger's layers",
            )
        measured = [("(a)", a, c["deposit"]), ("(e) GetAccount", e, c["get_account"])]
        if listed:
            measured.append(("(e) ListTransactions", listed, c["list_transactions"]))
        for name, ours, base in measured:
            if ours.get("cpu_ms_per_call") and base.get("cpu_ms_per_call"):
                out.append(_cpu_row(name, ours["cpu_ms_per_call"], base["cpu_ms_per_call"]))
            if ours.get("loop_thread") and base.get("loop_thread"):
                out.append(_loop_row(name, ours["loop_thread"], base["loop_thread"]))
        out.append(
            (
                "(b) deposits, one hot account",
                lat(b)
                + f"; balance {b['final_balance_minor']} = acked {b['acknowledged_sum_minor']}"
                f" ({b['acknowledged_deposits']} deposits, {b['errors']} errors)",
                "ceiling " + lat(c["deposit"]),
                f"{b['ceiling_ratio']:.3f}",
                f"{b['target']}: {_met(b['met'])}",
            )
        )
        out.append(
            (
                "(d) write then read (min_position)",
                f"p99 write+read {d['p99_ms']:.1f} ms ({d['throughput_per_s']:.0f}/s)",
                f"p99 write alone {d['write_p99_ms']:.1f} ms",
                f"{d['p99_ratio_write_read_over_write']:.3f}",
                f"{d['target']}: {_met(d['met'])}",
            )
        )
    if "c_long_stream" in r:
        c = r["c_long_stream"]
        for temp in ("warm", "cold"):
            out.append(
                (
                    f"(c) deposit on {c['stream_events']}-event stream, {temp}",
                    f"p50 {c[f'long_{temp}_p50_ms']:.2f} ms",
                    f"fresh account p50 {c[f'fresh_{temp}_p50_ms']:.2f} ms",
                    f"{c[f'{temp}_ratio']:.2f}",
                    f"{c['target']}: {_met(c[f'met_{temp}'])}",
                )
            )
    if "f_catchup" in r:
        f = r["f_catchup"]
        out.append(
            (
                f"(f) projector catch-up, {f['events']} events",
                f"{f['projector_events_per_s']:.0f} events/s"
                + ("" if f.get("complete", True) else f" (stopped at {f['events_applied']})")
                + f", peak RSS {f['projector_peak_rss_mib']} MiB",
                f"sqlite3 read {f['storage_ceiling_events_per_s']:.0f} events/s",
                f"{f['ceiling_ratio']:.3f}",
                f"{f['target']}: {_met(f['met'])}",
            )
        )
        if "floor_events_per_s" in f:
            out.append(
                (
                    "(f) floor: read + JSON-decode + one row per event",
                    f"{f['floor_events_per_s']:.0f} events/s (Ledger at {f['floor_ratio']:.3f}"
                    " of it)",
                    f"sqlite3 read {f['storage_ceiling_events_per_s']:.0f} events/s",
                    f"{f['floor_ceiling_ratio']:.3f}",
                    "bound on any projector's ratio",
                )
            )
    if "peer" in r:
        p = r["peer"]
        out.append(
            (
                f"peer: {p['deposits']} sequential deposits in-process",
                f"Ledger {p['ledger_per_s']:.0f}/s",
                f"eventsourcing {p['eventsourcing_version']} {p['eventsourcing_per_s']:.0f}/s"
                f" (cached {p['eventsourcing_cached_per_s']:.0f}/s)",
                f"{p['ratio']:.2f} ({p['ratio_vs_cached']:.2f} vs cached)",
                f"{p['target']}: {_met(p['met'])}",
            )
        )
    if "memory" in r:
        m = r["memory"]
        out.append(
            (
                "(g) peak RSS (VmHWM)",
                ", ".join(f"{k.removesuffix('_peak_rss_mib')} {v} MiB" for k, v in m.items()),
                "",
                "",
                "reported",
            )
        )
    return out


def _cpu_row(
    name: str, ours: dict[str, float], base: dict[str, float]
) -> tuple[str, str, str, str, str]:
    """CPU time per call of every process, summed: on a machine whose CPUs are all busy,
    base/ours is about the throughput ratio the scenario can reach."""

    def spent(cpu: dict[str, float]) -> tuple[str, float]:
        parts = {k: v for k, v in cpu.items() if k != "machine_busy_pct"}
        shown = ", ".join(f"{k} {v:.2f}" for k, v in parts.items() if v >= 0.01)
        total = sum(parts.values())
        return f"{total:.2f} ms ({shown}; CPUs {cpu['machine_busy_pct']:.0f}% busy)", total

    ours_text, ours_total = spent(ours)
    base_text, base_total = spent(base)
    return (
        f"{name} CPU time per call, all processes",
        ours_text,
        "ceiling " + base_text,
        f"{base_total / ours_total:.3f}" if ours_total else "-",
        "reported (ceiling/Ledger: the ratio if CPU-bound)",
    )


def _loop_row(
    name: str, ours: dict[str, dict[str, float]], base: dict[str, dict[str, float]]
) -> tuple[str, str, str, str, str]:
    """The busiest event-loop thread on each side (the one runnable the longest): when it
    is runnable nearly all the time, throughput is its share of a CPU over its CPU per
    call, and base/ours of the latter is the ratio if both got the same share."""

    def busiest(loops: dict[str, dict[str, float]]) -> tuple[str, float]:
        process, loop = max(
            loops.items(), key=lambda kv: kv[1]["running_pct"] + kv[1]["waiting_pct"]
        )
        text = (
            f"{process} {loop['ms_per_call']:.2f} ms; running {loop['running_pct']:.0f}%,"
            f" waiting for a CPU {loop['waiting_pct']:.0f}%"
        )
        return text, loop["ms_per_call"]

    ours_text, ours_ms = busiest(ours)
    base_text, base_ms = busiest(base)
    return (
        f"{name} event-loop thread per call, the busiest",
        ours_text,
        base_text,
        f"{base_ms / ours_ms:.3f}" if ours_ms else "-",
        "reported (ceiling/Ledger: the ratio if both loops got the same share of a CPU)",
    )


HEADER = ("scenario", "Ledger", "baseline (same run)", "ratio", "target")


def table(r: dict[str, Any]) -> str:
    lines = [" | ".join(HEADER)]
    for row in rows(r):
        lines.append(" | ".join(row))
    m = r["machine"]
    lines.append(f"machine: {m['nproc']} cpus, {m['cpu_model']}, Python {m['python']}")
    return "\n".join(lines)


def markdown(r: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows(r):
        lines.append("| " + " | ".join(x.replace("|", "/") for x in row) + " |")
    return "\n".join(lines)


Bars = tuple[str, str, str, float, float]
"""(scenario, Ledger's name, the baseline's name, Ledger's value, the baseline's value)."""
Latencies = tuple[str, str, str, tuple[str, ...], list[float], list[float]]
"""(scenario, Ledger's name, the baseline's name, what each pair of bars is, Ledger's
milliseconds, the baseline's)."""
PERCENTILES = ("p50", "p95", "p99")
SERVED = (
    ("(a) deposits", "a_deposits_spread", "deposit"),
    ("(e) GetAccount", "e_get_account", "get_account"),
    ("(e) ListTransactions", "e_list_transactions", "list_transactions"),
    ("(b) hot account", "b_hot_account", "deposit"),
)
"""The served scenarios against the ceiling: (label, result key, the ceiling's key)."""


def _served(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Those of SERVED in `r` (results from before ListTransactions was measured lack it)."""
    return [s for s in SERVED if s[1] in r]


def _throughputs(r: dict[str, Any]) -> list[Bars]:
    out: list[Bars] = []
    if "a_deposits_spread" in r:
        for label, key, base in _served(r):
            ours, theirs = r[key]["throughput_per_s"], r["ceiling"][base]["throughput_per_s"]
            out.append((label, "Ledger", "ceiling", ours, theirs))
    if "f_catchup" in r:
        f = r["f_catchup"]
        ours, theirs = f["projector_events_per_s"], f["storage_ceiling_events_per_s"]
        out.append(("(f) catch-up, events", "Ledger", "sqlite3 read", ours, theirs))
    if "peer" in r:
        p = r["peer"]
        ours, theirs = p["ledger_per_s"], p["eventsourcing_per_s"]
        out.append(("peer deposits", "Ledger", "eventsourcing", ours, theirs))
    return out


def _latencies(r: dict[str, Any]) -> list[Latencies]:
    def of(result: dict[str, Any], prefix: str = "") -> list[float]:
        return [result[f"{prefix}{q}_ms"] for q in PERCENTILES]

    out: list[Latencies] = []
    if "a_deposits_spread" in r:
        for label, key, base in _served(r):
            ours, theirs = of(r[key]), of(r["ceiling"][base])
            out.append((label, "Ledger", "ceiling", PERCENTILES, ours, theirs))
        d = r["d_write_then_read"]
        out.append(
            (
                "(d) write then read",
                "write+read",
                "write alone",
                PERCENTILES,
                of(d),
                of(d, "write_"),
            )
        )
    if "c_long_stream" in r:
        c = r["c_long_stream"]
        long = [c["long_warm_p50_ms"], c["long_cold_p50_ms"]]
        fresh = [c["fresh_warm_p50_ms"], c["fresh_cold_p50_ms"]]
        ticks = ("warm p50", "cold p50")
        events = f"{c['stream_events'] // 1000}k"
        out.append((f"(c) {events}-event stream", "long", "fresh", ticks, long, fresh))
    return out


def chart(r: dict[str, Any], path: Path) -> Path | None:
    """Throughput (top row) and latency percentiles (bottom row) per scenario, each
    beside its same-run baseline; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rates, latencies = _throughputs(r), _latencies(r)
    columns = max(len(rates), len(latencies))
    if not columns:
        return None
    rows = 2 if latencies else 1
    fig, axes = plt.subplots(
        rows, columns, figsize=(max(5.0, 3.2 * columns), 3.4 * rows), squeeze=False
    )
    for ax, (label, ours_name, base_name, ours, base) in zip(axes[0], rates, strict=False):
        ax.bar([ours_name, base_name], [ours, base], color=["tab:blue", "tab:gray"])
        ax.set_title(f"{label}\nratio {ours / base:.2f}" if base else label, fontsize=9)
        ax.set_ylabel("per second", fontsize=8)
    for ax, (label, ours_name, base_name, ticks, ours_ms, base_ms) in zip(
        axes[-1], latencies, strict=False
    ):
        at = range(len(ticks))
        ax.bar([x - 0.2 for x in at], ours_ms, width=0.4, color="tab:blue", label=ours_name)
        ax.bar([x + 0.2 for x in at], base_ms, width=0.4, color="tab:gray", label=base_name)
        ax.set_xticks(list(at), ticks)
        ax.set_title(f"{label}: latency", fontsize=9)
        ax.set_ylabel("ms", fontsize=8)
        ax.legend(fontsize=7)
    for row, used in zip(axes, (len(rates), len(latencies)), strict=False):
        for ax in row[used:]:
            ax.axis("off")  # an empty cell
    for ax in axes.flat:
        ax.tick_params(labelsize=8)
    fig.suptitle(f"Ledger benchmarks ({r['profile']['name']}), same-run baselines", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    import json
    import sys

    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
