"""`python -m bench [--quick]`: runs every scenario, prints the figures, writes
bench-results/results.json (and chart.png when matplotlib is installed)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from bench import inproc, report
from bench.loadgen import (
    DEPOSIT_HOT,
    DEPOSIT_SPREAD,
    GET_ACCOUNT,
    LIST_TRANSACTIONS,
    TRANSACTIONS_PAGE,
    WRITE_READ,
    Load,
    LoadResult,
    merged,
    peak_rss_kib,
    run_load,
)
from ledger.v1 import account_query_service_pb2 as query_pb
from ledger.v1 import account_query_service_pb2_grpc as query_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from tests.support.processes import COMMAND_SERVER, PROJECTOR, QUERY_SERVER, Stack  # noqa: E402


@dataclass(frozen=True)
class Profile:
    name: str
    accounts: int
    warmup: float
    duration: float
    processes: int
    concurrency: int
    peer_deposits: int
    peer_accounts: int
    long_stream: int
    cold_samples: int
    warm_samples: int
    catchup_events: int
    catchup_cap_s: float  # stop the catch-up here and report the rate so far


FULL = Profile("full", 10_000, 2.0, 10.0, 4, 8, 5_000, 100, 100_000, 51, 300, 1_000_000, 300.0)
QUICK = Profile("quick", 10_000, 1.0, 4.0, 4, 8, 1_000, 100, 100_000, 21, 100, 100_000, 60.0)


SERVED_ROUNDS = 4
"""(a), its baselines, and (e) and its baseline take turns in this many windows each."""
HISTORY_ACCOUNTS = 1_000
HISTORY_DEPOSITS = 25
"""(e)'s ListTransactions reads the first page of one of HISTORY_ACCOUNTS accounts with
HISTORY_DEPOSITS deposits each (written before the stack starts, untouched by the load):
a full page of TRANSACTIONS_PAGE, and the token for the next."""
PEER_ROUNDS = 5
"""The peer's deposits are made in this many rounds, the three sides taking turns."""


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM (peak resident set) of a running process, in MiB."""
    kib = peak_rss_kib(pid)
    return None if kib is None else round(kib / 1024, 1)


class Ceiling:
    """The bare grpc.aio server in a subprocess; `floor` ("--append" DIR, "--pages" FILE)
    makes it one of bench.ceiling's floors."""

    def __init__(self, *floor: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.ceiling", str(self.port), *floor],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the ceiling server did not start")
        self.target = f"127.0.0.1:{self.port}"

    def close(self) -> float | None:
        rss = peak_rss_mib(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(10)
        return rss


def wait_projected(target: str, account: str, position: int) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = query_grpc.AccountQueryServiceStub(channel)
        stub.GetAccount(
            query_pb.GetAccountRequest(account_id=account, min_position=position), timeout=120
        )


def same_page(floor: str, query: str, account: str) -> None:
    """The page floor must answer the page Ledger answers (its token aside): else it
    would be a floor for some other, cheaper work."""
    request = query_pb.ListTransactionsRequest(account_id=account, page_size=TRANSACTIONS_PAGE)
    pages = []
    for target in (floor, query):
        with grpc.insecure_channel(target) as channel:
            stub = query_grpc.AccountQueryServiceStub(channel)
            pages.append(stub.ListTransactions(request, timeout=30))
    theirs, ours = pages
    full = len(ours.transactions) == TRANSACTIONS_PAGE and bool(theirs.next_page_token)
    if list(ours.transactions) != list(theirs.transactions) or not full:
        raise RuntimeError(f"the page floor answers another page than Ledger for {account}")


def get_balance(target: str, account: str, position: int) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = query_grpc.AccountQueryServiceStub(channel)
        response = stub.GetAccount(
            query_pb.GetAccountRequest(account_id=account, min_position=position), timeout=120
        )
        return int(response.account.balance_minor)


def ratio(value: float, baseline: float) -> float:
    return round(value / baseline, 3) if baseline else float("nan")


def ratios(ours: LoadResult, baseline: LoadResult) -> dict[str, Any]:
    """The ratio of two results taken in turns, pooled and turn by turn: on this host a
    single turn's ratio can stray by a quarter, and the spread says how far to trust it."""
    return {
        "ceiling_ratio": ratio(ours.throughput, baseline.throughput),
        "turn_ratios": [
            ratio(a, b) for a, b in zip(ours.windows_per_s, baseline.windows_per_s, strict=True)
        ],
    }


def load(
    profile: Profile,
    kind: str,
    label: str,
    cmd: str,
    query: str,
    ids: list[str],
    watch: tuple[tuple[str, int], ...] = (),
) -> LoadResult:
    result = run_load(
        Load(
            kind=kind,
            command_target=cmd,
            query_target=query,
            accounts=tuple(ids),
            processes=profile.processes,
            concurrency=profile.concurrency,
            warmup=profile.warmup,
            duration=profile.duration,
            label=label,
            watch=watch,
        )
    )
    cpu = ", ".join(f"{k} {v}" for k, v in result.cpu_ms_per_call.items())
    log(f"{label}: {result.throughput:.0f}/s, p99 {result.summary()['p99_ms']} ms")
    log(f"  CPU ms per call: {cpu}")
    for name, loop in result.loop_threads.items():
        log(
            f"  {name} event-loop thread: {loop['ms_per_call']} ms per call, running"
            f" {loop['running_pct']}%, waiting for a CPU {loop['waiting_pct']}%"
        )
    return result


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) inside the block, and let go however it ends."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


Watch = tuple[tuple[str, int], ...]
Side = Callable[[Profile, str], LoadResult]
"""One side of a ratio: runs its load for the window the profile gives, under a label."""


def in_turns(profile: Profile, sides: dict[str, Side]) -> dict[str, LoadResult]:
    """Each side's load over the profile's duration, in SERVED_ROUNDS windows that take
    turns (A, B, A, B): a drift in the machine's speed then weighs on every side alike,
    where one window after another would hand it to one side only."""
    window = replace(profile, duration=profile.duration / SERVED_ROUNDS)
    parts: dict[str, list[LoadResult]] = {name: [] for name in sides}
    for turn in range(1, SERVED_ROUNDS + 1):
        for name, side in sides.items():
            parts[name].append(side(window, f"{name} {turn}/{SERVED_ROUNDS}"))
    results = {name: merged(windows) for name, windows in parts.items()}
    for name, result in results.items():
        log(f"{name}, {SERVED_ROUNDS} turns: {result.throughput:.0f}/s")
    return results


def served_scenarios(profile: Profile, work: Path, out: dict[str, Any]) -> None:
    ids = [f"acct-{i:05d}" for i in range(profile.accounts)]
    data = work / "served"
    log(f"opening {len(ids)} accounts in-process")
    seconds = asyncio.run(inproc.open_accounts(data / "data", [*ids, "hot-0"]))
    out["setup"] = {"accounts_opened": len(ids) + 1, "open_seconds": round(seconds, 2)}
    histories = [f"hist-{i:05d}" for i in range(HISTORY_ACCOUNTS)]
    log(f"writing {len(histories)} accounts with {HISTORY_DEPOSITS} deposits each")
    head = asyncio.run(inproc.build_streams(data / "data", histories, 1 + HISTORY_DEPOSITS))

    # Every server is up for the whole group, and each scenario's sides take turns in
    # SERVED_ROUNDS windows: a drift in the machine's speed then weighs on both sides
    # of a ratio alike. An idle server costs nothing (they wait on sockets and signals),
    # and the projector has caught up before a baseline's window starts.
    with contextlib.ExitStack() as running:
        ceiling = Ceiling()
        running.callback(ceiling.close)
        (work / "append-floor").mkdir(parents=True, exist_ok=True)
        floor = Ceiling("--append", str(work / "append-floor"))
        running.callback(floor.close)
        stack = Stack(data)
        log("starting command server, projector, query server")
        stack.start()
        running.callback(stack.close)
        cmd, query = stack.command_target, stack.query_target
        wait_projected(query, "hot-0", head)
        page_floor = Ceiling("--pages", str(data / "data" / "views.sqlite3"))
        running.callback(page_floor.close)
        same_page(page_floor.target, query, histories[0])
        ours = tuple((n, stack[n].proc.pid) for n in (COMMAND_SERVER, PROJECTOR, QUERY_SERVER))  # type: ignore[union-attr]
        bare = (("ceiling_server", ceiling.proc.pid),)
        at_floor = (("append_floor_server", floor.proc.pid),)
        at_page_floor = (("page_floor_server", page_floor.proc.pid),)

        def against(target: str, watch: Watch, kind: str, on: list[str] = ids) -> Side:
            return lambda window, label: load(window, kind, label, target, target, on, watch)

        def ledger(kind: str, on: list[str] = ids, *, projector_paused: bool = False) -> Side:
            """Ledger's side; `projector_paused` stops the projector (SIGSTOP) for the
            window and lets it catch up after: what the command path reaches without the
            views' upkeep sharing the CPUs. A diagnostic, as the floors are; not a mode of
            Ledger."""
            projector = stack[PROJECTOR].proc.pid  # type: ignore[union-attr]

            def side(window: Profile, label: str) -> LoadResult:
                with paused(projector) if projector_paused else contextlib.nullcontext():
                    result = load(window, kind, label, cmd, query, on, ours)
                wait_projected(query, "hot-0", result.max_position)  # before the next turn
                return result

            return side

        deposits = in_turns(
            profile,
            {
                "ceiling DepositFunds": against(ceiling.target, bare, DEPOSIT_SPREAD),
                "(a) floor: gRPC + durable append": against(floor.target, at_floor, DEPOSIT_SPREAD),
                "(a) deposits, 10k accounts": ledger(DEPOSIT_SPREAD),
                "(a) with the projector paused": ledger(DEPOSIT_SPREAD, projector_paused=True),
            },
        )
        c_dep, f_dep, a, a_paused = deposits.values()
        reads = in_turns(
            profile,
            {
                "ceiling GetAccount": against(ceiling.target, bare, GET_ACCOUNT),
                "(e) GetAccount": ledger(GET_ACCOUNT),
                "ceiling ListTransactions": against(
                    ceiling.target, bare, LIST_TRANSACTIONS, histories
                ),
                "(e) floor: gRPC + a page from the views": against(
                    page_floor.target, at_page_floor, LIST_TRANSACTIONS, histories
                ),
                "(e) ListTransactions": ledger(LIST_TRANSACTIONS, histories),
            },
        )
        c_get, e, c_list, f_list, e_list = reads.values()
        b = load(profile, DEPOSIT_HOT, "(b) deposits, one hot account", cmd, query, ["hot-0"], ours)
        balance = get_balance(query, "hot-0", b.max_position)
        d = load(profile, WRITE_READ, "(d) write then read", cmd, query, ids, ours)
        out["memory"] = {"ceiling_server_peak_rss_mib": peak_rss_mib(ceiling.proc.pid)}
        for name in (COMMAND_SERVER, PROJECTOR, QUERY_SERVER):
            out["memory"][f"{name}_peak_rss_mib"] = peak_rss_mib(stack[name].proc.pid)  # type: ignore[union-attr]
    out["memory"]["load_client_peak_rss_mib"] = round(
        max(r.client_peak_rss_kib for r in (a, e, e_list, b, d)) / 1024, 1
    )

    out["ceiling"] = {
        "deposit": c_dep.summary(),
        "get_account": c_get.summary(),
        "list_transactions": c_list.summary(),
    }
    for key, result, base, target in (
        ("a_deposits_spread", a, c_dep, 0.5),
        ("e_get_account", e, c_get, 0.7),
        ("e_list_transactions", e_list, c_list, 0.7),
    ):
        out[key] = {**result.summary(), **ratios(result, base), "target": f">= {target}"}
        out[key]["met"] = out[key]["ceiling_ratio"] >= target
    out["e_list_transactions"]["page_size"] = TRANSACTIONS_PAGE
    for key, floor_result, ledger_result, base in (
        ("a_append_floor", f_dep, a, c_dep),
        ("a_projector_paused", a_paused, a, c_dep),
        ("e_page_floor", f_list, e_list, c_list),
    ):
        out[key] = {
            **floor_result.summary(),
            **ratios(floor_result, base),
            "ledger_ratio": ratio(ledger_result.throughput, floor_result.throughput),
        }
    no_loss = balance == b.acked_amount if not b.errors else balance >= b.acked_amount
    out["b_hot_account"] = {
        **b.summary(),
        "ceiling_ratio": ratio(b.throughput, c_dep.throughput),
        "acknowledged_deposits": b.acked_count,
        "acknowledged_sum_minor": b.acked_amount,
        "final_balance_minor": balance,
        "no_lost_deposit": no_loss,
        "target": ">= 0.25 and no lost deposit",
        "met": ratio(b.throughput, c_dep.throughput) >= 0.25 and no_loss,
    }
    d_summary = d.summary()
    d_ratio = ratio(d_summary["p99_ms"], d_summary["write_p99_ms"])
    out["d_write_then_read"] = {
        **d_summary,
        "p99_ratio_write_read_over_write": d_ratio,
        "target": "<= 2.0",
        "met": d_ratio <= 2.0,
    }


def peer_scenario(profile: Profile, work: Path, out: dict[str, Any]) -> None:
    n, accounts, rounds = profile.peer_deposits, profile.peer_accounts, PEER_ROUNDS
    log(
        f"peer: {n} sequential deposits over {accounts} accounts, in {rounds} rounds taking"
        " turns: Ledger in-process, eventsourcing (no aggregate cache, its default),"
        " eventsourcing with AGGREGATE_CACHE_MAXSIZE"
    )
    with (
        inproc.LedgerDeposits(work / "peer-ledger", accounts) as ledger,
        inproc.EventsourcingDeposits(work / "peer-es", accounts, cache=False) as es,
        inproc.EventsourcingDeposits(work / "peer-es", accounts, cache=True) as cached,
    ):
        ledger_rate, es_rate, es_cached = inproc.interleaved((ledger, es, cached), n, rounds)
    version = importlib.metadata.version("eventsourcing")
    out["peer"] = {
        "eventsourcing_version": version,
        "deposits": n,
        "accounts": accounts,
        "concurrency": "sequential (one deposit at a time, each awaited/committed)",
        "rounds": rounds,
        "ledger_per_s": round(ledger_rate, 1),
        "eventsourcing_per_s": round(es_rate, 1),
        "eventsourcing_cached_per_s": round(es_cached, 1),
        "ratio": ratio(ledger_rate, es_rate),
        "ratio_vs_cached": ratio(ledger_rate, es_cached),
        "target": ">= 2.0",
        "met": ratio(ledger_rate, es_rate) >= 2.0,
    }


def long_stream_scenario(profile: Profile, work: Path, out: dict[str, Any]) -> None:
    data = work / "long"
    log(f"(c) appending a {profile.long_stream}-event stream")
    started = time.perf_counter()
    asyncio.run(inproc.build_streams(data, [inproc.LONG_STREAM_ACCOUNT], profile.long_stream))
    built = time.perf_counter() - started
    log("(c) measuring deposits, cold and warm")
    figures = asyncio.run(
        inproc.long_stream_deposits(data, profile.cold_samples, profile.warm_samples)
    )
    out["c_long_stream"] = {
        "stream_events": profile.long_stream,
        "build_seconds": round(built, 2),
        **figures,
        "target": "<= 1.5 (long/fresh p50)",
        "met_warm": figures["warm_ratio"] <= 1.5,
        "met_cold": figures["cold_ratio"] <= 1.5,
    }


def catchup_scenario(profile: Profile, work: Path, out: dict[str, Any]) -> None:
    data = work / "catchup"
    per_account = 100
    n_accounts = profile.catchup_events // per_account
    log(f"(f) appending {profile.catchup_events} events over {n_accounts} accounts")
    started = time.perf_counter()
    names = [f"bulk-{i}" for i in range(n_accounts)]
    head = asyncio.run(inproc.build_streams(data / "data", names, per_account))
    built = time.perf_counter() - started
    count, seconds = inproc.storage_ceiling(data / "data")
    log(f"(f) storage ceiling: {count / seconds:.0f} events/s")
    floor_count, floor_seconds = inproc.projector_floor(data / "data", data / "floor")
    log(f"(f) projector floor: {floor_count / floor_seconds:.0f} events/s; starting the projector")
    stack = Stack(data)
    views = data / "data" / "views.sqlite3"
    started = time.perf_counter()
    stack.start(PROJECTOR)
    try:
        position = 0
        while position < head and time.perf_counter() - started < profile.catchup_cap_s:
            time.sleep(0.2)
            position = _checkpoint(views)
            elapsed = time.perf_counter() - started
            sys.stderr.write(
                f"\r  (f) projector catch-up {position:>9}/{head} events "
                f"{position / max(elapsed, 1e-9):>8.0f}/s "
            )
            sys.stderr.flush()
        elapsed = time.perf_counter() - started
        sys.stderr.write("\n")
        rss = peak_rss_mib(stack[PROJECTOR].proc.pid)  # type: ignore[union-attr]
    finally:
        stack.close()
    rate, ceiling, floor = position / elapsed, count / seconds, floor_count / floor_seconds
    out["f_catchup"] = {
        "events": head,
        "events_applied": position,
        "complete": position >= head,
        "build_seconds": round(built, 2),
        "projector_seconds": round(elapsed, 2),
        "projector_events_per_s": round(rate, 1),
        "storage_ceiling_events_per_s": round(ceiling, 1),
        "ceiling_ratio": ratio(rate, ceiling),
        # The fastest conceivable projector (bench.inproc.projector_floor), same run:
        # the best ratio to the ceiling that any projector could show on this machine.
        "floor_events_per_s": round(floor, 1),
        "floor_ceiling_ratio": ratio(floor, ceiling),
        "floor_ratio": ratio(rate, floor),
        "projector_peak_rss_mib": rss,
        "target": ">= 0.3",
        "met": ratio(rate, ceiling) >= 0.3,
    }


def _checkpoint(views: Path) -> int:
    import sqlite3

    if not views.exists():
        return 0
    conn = sqlite3.connect(f"file:{views}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT MAX(position) FROM checkpoints").fetchone()
        return int(row[0] or 0)
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


SCENARIOS = {
    "served": served_scenarios,
    "peer": peer_scenario,
    "long": long_stream_scenario,
    "catchup": catchup_scenario,
}
NEEDS = {"peer": "eventsourcing"}
"""The groups that cannot run without a module of the bench extra (matplotlib is
optional: without it the chart is skipped)."""


def missing_modules(groups: list[str]) -> list[str]:
    """What `groups` need and cannot import: checked before any measuring, so a missing
    extra is said at once rather than as a traceback minutes in, with nothing printed."""
    needed = sorted({NEEDS[group] for group in groups if group in NEEDS})
    return [module for module in needed if importlib.util.find_spec(module) is None]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter windows (about 2 minutes)")
    parser.add_argument(
        "--only", choices=sorted(SCENARIOS), action="append", help="run only these groups"
    )
    parser.add_argument("--processes", type=int, help="load client processes (default 4)")
    parser.add_argument("--concurrency", type=int, help="tasks per client process (default 8)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results")
    args = parser.parse_args()
    groups: list[str] = args.only or list(SCENARIOS)
    if missing := missing_modules(groups):
        parser.error(
            f"{', '.join(missing)} is not installed: install the bench extra"
            " (pip install -e '.[bench]'), or leave out the groups that need it"
            f" ({', '.join(g for g in groups if NEEDS.get(g) in missing)}) with --only"
        )
    profile = QUICK if args.quick else FULL
    if args.processes or args.concurrency:
        profile = replace(
            profile,
            processes=args.processes or profile.processes,
            concurrency=args.concurrency or profile.concurrency,
        )
    results: dict[str, Any] = {
        "profile": profile.__dict__,
        "machine": machine(),
        "command": "python -m bench" + (" --quick" if args.quick else ""),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        for name in groups:
            SCENARIOS[name](profile, Path(tmp), results)
    results["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"results-{profile.name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(report.table(results))
    chart = report.chart(results, args.out / "chart.png")
    print(
        f"\nresults: {path}"
        + (f"\nchart: {chart}" if chart else "\nchart: skipped (no matplotlib)")
    )
    print(f"elapsed: {results['elapsed_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
