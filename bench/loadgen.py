"""The load generator: N client processes over real gRPC on loopback, each running a
fixed number of asyncio tasks that issue calls back to back (closed loop).

All processes share one timeline: a warm-up, then a measured window. A call counts if
it starts and ends inside the window; its latency is kept raw and the parent merges
the raw latencies of every process before taking percentiles.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from ledger.v1 import account_command_service_pb2 as cmd_pb
from ledger.v1 import account_command_service_pb2_grpc as cmd_grpc
from ledger.v1 import account_query_service_pb2 as query_pb
from ledger.v1 import account_query_service_pb2_grpc as query_grpc

CALL_TIMEOUT = 30.0
# The kinds of load: what each task does in one iteration.
DEPOSIT_SPREAD = "deposit_spread"  # a deposit on a random account among `accounts`
DEPOSIT_HOT = "deposit_hot"  # a deposit on the one account accounts[0]
GET_ACCOUNT = "get_account"  # GetAccount on a random account
LIST_TRANSACTIONS = "list_transactions"  # the first TRANSACTIONS_PAGE of a random account's
WRITE_READ = "write_read"  # a deposit, then GetAccount with min_position = its position
TRANSACTIONS_PAGE = 10


@dataclass(frozen=True)
class Load:
    kind: str
    command_target: str
    query_target: str
    accounts: tuple[str, ...]
    processes: int = 4
    concurrency: int = 8
    warmup: float = 2.0
    duration: float = 10.0
    label: str = ""
    watch: tuple[tuple[str, int], ...] = ()
    """(name, pid) of server processes whose CPU time is measured over the window."""


def peak_rss_kib(pid: int | str = "self") -> int | None:
    """VmHWM, the peak resident set of a running process, from /proc: it starts afresh at
    exec, where getrusage's ru_maxrss carries the parent's peak into a spawned child (the
    load clients all read the bench process's own peak that way until this)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc; 0.0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_thread_ns(pid: int) -> tuple[int, int] | None:
    """(running, waiting for a CPU) nanoseconds so far of a process's main thread, which
    runs a server's event loop, from /proc (schedstat); None if the kernel keeps none."""
    try:
        running, waiting, _ = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return None
    return int(running), int(waiting)


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


@dataclass
class LoadResult:
    label: str
    ops: int
    errors: int
    duration: float
    latencies_ms: list[float] = field(repr=False)
    write_latencies_ms: list[float] = field(repr=False)
    acked_amount: int = 0  # every acknowledged deposit, warm-up included
    acked_count: int = 0
    max_position: int = 0
    client_peak_rss_kib: int = 0
    answer_bytes: int = 0
    """The serialized size of an answer (each client's first; the largest of them): a
    baseline must send answers as large as Ledger's."""
    cpu_ms_per_call: dict[str, float] = field(default_factory=dict)
    """CPU time per counted call over the measured window: each watched process, the
    load clients together, and `machine_busy_pct` (all CPUs, anything running)."""
    loop_threads: dict[str, dict[str, float]] = field(default_factory=dict)
    """Each watched server's event-loop thread over the window: `ms_per_call` of CPU, and
    the share of the window it spent `running_pct` and `waiting_pct` for a CPU. A thread
    runnable nearly all the time bounds its server's throughput."""
    windows_per_s: tuple[float, ...] = ()
    """Each window's throughput, for a result `merged` from windows taken in turns."""

    @property
    def throughput(self) -> float:
        return self.ops / self.duration

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ops": self.ops,
            "errors": self.errors,
            "window_s": self.duration,
            "throughput_per_s": round(self.throughput, 1),
            **{f"{k}_ms": v for k, v in percentiles(self.latencies_ms).items()},
            "client_peak_rss_mib": round(self.client_peak_rss_kib / 1024, 1),
            "answer_bytes": self.answer_bytes,
            "cpu_ms_per_call": self.cpu_ms_per_call,
            "loop_thread": self.loop_threads,
        }
        if self.windows_per_s:
            out["windows_per_s"] = [round(w, 1) for w in self.windows_per_s]
        if self.write_latencies_ms:
            out.update(
                {f"write_{k}_ms": v for k, v in percentiles(self.write_latencies_ms).items()}
            )
        return out


def merged(parts: Sequence[LoadResult]) -> LoadResult:
    """One result from windows of the same load taken in turns with another's: calls,
    latencies and acknowledged sums pooled; CPU per call weighted by each window's calls,
    busy and running shares by its length. The label is the first window's, without
    its turn ("... 1/2")."""
    first = parts[0]
    ops = sum(p.ops for p in parts) or 1
    duration = sum(p.duration for p in parts)

    def by_calls(values: Sequence[tuple[float, LoadResult]]) -> float:
        return sum(v * p.ops for v, p in values) / ops

    def by_time(values: Sequence[tuple[float, LoadResult]]) -> float:
        return sum(v * p.duration for v, p in values) / duration

    cpu: dict[str, float] = {}
    for name in first.cpu_ms_per_call:
        values = [(p.cpu_ms_per_call[name], p) for p in parts if name in p.cpu_ms_per_call]
        average = by_time(values) if name == "machine_busy_pct" else by_calls(values)
        cpu[name] = round(average, 1 if name == "machine_busy_pct" else 3)
    loops: dict[str, dict[str, float]] = {}
    for name in first.loop_threads:
        windows = [(p.loop_threads[name], p) for p in parts if name in p.loop_threads]
        loops[name] = {
            "ms_per_call": round(by_calls([(w["ms_per_call"], p) for w, p in windows]), 3),
            "running_pct": round(by_time([(w["running_pct"], p) for w, p in windows]), 1),
            "waiting_pct": round(by_time([(w["waiting_pct"], p) for w, p in windows]), 1),
        }
    return LoadResult(
        label=first.label.rsplit(" ", 1)[0],
        ops=sum(p.ops for p in parts),
        errors=sum(p.errors for p in parts),
        duration=duration,
        latencies_ms=[x for p in parts for x in p.latencies_ms],
        write_latencies_ms=[x for p in parts for x in p.write_latencies_ms],
        acked_amount=sum(p.acked_amount for p in parts),
        acked_count=sum(p.acked_count for p in parts),
        max_position=max(p.max_position for p in parts),
        client_peak_rss_kib=max(p.client_peak_rss_kib for p in parts),
        answer_bytes=max(p.answer_bytes for p in parts),
        cpu_ms_per_call=cpu,
        loop_threads=loops,
        windows_per_s=tuple(p.throughput for p in parts),
    )


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}


async def _client(load: Load, index: int, start: float, progress: Any) -> dict[str, Any]:
    warm_end = start + load.warmup
    end = warm_end + load.duration
    rng = random.Random(index)
    tag = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    writes: list[float] = []
    state = {"ops": 0, "errors": 0, "amount": 0, "count": 0, "max_position": 0, "seq": 0}
    answer_bytes = 0
    hot = load.kind == DEPOSIT_HOT
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with (
        grpc.aio.insecure_channel(load.command_target, options=options) as cmd_channel,
        grpc.aio.insecure_channel(load.query_target, options=options) as query_channel,
    ):
        commands = cmd_grpc.AccountCommandServiceStub(cmd_channel)
        queries = query_grpc.AccountQueryServiceStub(query_channel)

        async def deposit(account: str) -> cmd_pb.DepositFundsResponse:
            state["seq"] += 1
            amount = 1 + state["seq"] % 97
            response = await commands.DepositFunds(
                cmd_pb.DepositFundsRequest(
                    request_id=f"bench-{tag}-{state['seq']}",
                    account_id=account,
                    amount_minor=amount,
                    currency="EUR",
                    description="bench",
                ),
                timeout=CALL_TIMEOUT,
            )
            state["amount"] += amount
            state["count"] += 1
            state["max_position"] = max(state["max_position"], response.position)
            return response

        async def task() -> None:
            nonlocal answer_bytes
            while True:
                began = time.time()
                if began >= end:
                    return
                write_done = 0.0
                answer: Message
                try:
                    if load.kind == GET_ACCOUNT:
                        answer = await queries.GetAccount(
                            query_pb.GetAccountRequest(account_id=rng.choice(load.accounts)),
                            timeout=CALL_TIMEOUT,
                        )
                    elif load.kind == LIST_TRANSACTIONS:
                        answer = await queries.ListTransactions(
                            query_pb.ListTransactionsRequest(
                                account_id=rng.choice(load.accounts), page_size=TRANSACTIONS_PAGE
                            ),
                            timeout=CALL_TIMEOUT,
                        )
                    elif load.kind == WRITE_READ:
                        written = await deposit(rng.choice(load.accounts))
                        write_done = time.time()
                        answer = await queries.GetAccount(
                            query_pb.GetAccountRequest(
                                account_id=load.accounts[0] if hot else rng.choice(load.accounts),
                                min_position=written.position,
                            ),
                            timeout=CALL_TIMEOUT,
                        )
                    else:
                        answer = await deposit(
                            load.accounts[0] if hot else rng.choice(load.accounts)
                        )
                except grpc.aio.AioRpcError:
                    if began >= warm_end:
                        state["errors"] += 1
                    continue
                finished = time.time()
                if began >= warm_end and finished <= end:
                    state["ops"] += 1
                    latencies.append((finished - began) * 1000)
                    if write_done:
                        writes.append((write_done - began) * 1000)
                progress[index] += 1
                if not answer_bytes:
                    answer_bytes = answer.ByteSize()

        await asyncio.sleep(max(0.0, start - time.time()))
        await asyncio.gather(*(task() for _ in range(load.concurrency)))
    return {
        **state,
        "latencies": latencies,
        "writes": writes,
        "answer_bytes": answer_bytes,
        "rss_kib": peak_rss_kib() or 0,
    }


def _worker(load: Load, index: int, start: float, progress: Any, results: Any) -> None:
    try:
        results.put(asyncio.run(_client(load, index, start, progress)))
    except BaseException as exc:
        results.put({"failed": repr(exc)})
        raise


def run_load(load: Load) -> LoadResult:
    """Run the load, printing a progress line on stderr; returns the merged result."""
    ctx = mp.get_context("spawn")  # gRPC does not survive fork after use in the parent
    progress = ctx.Array("q", load.processes, lock=False)
    results = ctx.Queue()
    start = time.time() + 1.5 + 0.2 * load.processes  # time for the interpreters to start
    workers = [
        ctx.Process(target=_worker, args=(load, i, start, progress, results), daemon=True)
        for i in range(load.processes)
    ]
    for worker in workers:
        worker.start()
    end = start + load.warmup + load.duration
    last, last_t = 0, time.time()
    pids = [*load.watch, *((f"client-{i}", w.pid or 0) for i, w in enumerate(workers))]
    cpu_at: list[tuple[dict[str, float], tuple[float, float]]] = []
    loops_at: list[tuple[dict[str, tuple[int, int] | None], int]] = []
    marks = [start + load.warmup, end]  # CPU times are read at the window's two ends
    while time.time() < end + 0.5:
        time.sleep(min(0.5, max(0.01, marks[0] - time.time())) if marks else 0.5)
        if marks and time.time() >= marks[0]:
            marks.pop(0)
            cpu_at.append(({n: cpu_seconds(p) for n, p in pids}, machine_busy_seconds()))
            loops_at.append(({n: loop_thread_ns(p) for n, p in load.watch}, time.monotonic_ns()))
        now, done = time.time(), sum(progress)
        phase = "starting" if now < start else "warm-up" if now < start + load.warmup else "measure"
        rate = (done - last) / max(1e-9, now - last_t)
        last, last_t = done, now
        remaining = max(0.0, end - now)
        sys.stderr.write(
            f"\r  {load.label:<28} {phase:<8} {done:>8} done {rate:>7.0f}/s {remaining:3.0f}s left"
        )
        sys.stderr.flush()
    sys.stderr.write("\n")
    parts = [results.get(timeout=CALL_TIMEOUT + 30) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
    failed = [p["failed"] for p in parts if "failed" in p]
    if failed:
        raise RuntimeError(f"load client failed: {failed[0]}")
    return LoadResult(
        label=load.label,
        ops=sum(p["ops"] for p in parts),
        errors=sum(p["errors"] for p in parts),
        duration=load.duration,
        latencies_ms=[x for p in parts for x in p["latencies"]],
        write_latencies_ms=[x for p in parts for x in p["writes"]],
        acked_amount=sum(p["amount"] for p in parts),
        acked_count=sum(p["count"] for p in parts),
        max_position=max(p["max_position"] for p in parts),
        client_peak_rss_kib=max(p["rss_kib"] for p in parts),
        answer_bytes=max(p["answer_bytes"] for p in parts),
        cpu_ms_per_call=_cpu_per_call(cpu_at, sum(p["ops"] for p in parts)),
        loop_threads=_loop_threads(loops_at, sum(p["ops"] for p in parts)),
    )


def _cpu_per_call(
    cpu_at: list[tuple[dict[str, float], tuple[float, float]]], ops: int
) -> dict[str, float]:
    if len(cpu_at) < 2 or not ops:
        return {}
    (before, (busy0, total0)), (after, (busy1, total1)) = cpu_at
    per_call = {n: (after[n] - before[n]) * 1000 / ops for n in before}
    out = {n: round(v, 3) for n, v in per_call.items() if not n.startswith("client-")}
    out["clients"] = round(sum(v for n, v in per_call.items() if n.startswith("client-")), 3)
    out["machine_busy_pct"] = round(100 * (busy1 - busy0) / max(1e-9, total1 - total0), 1)
    return out


def _loop_threads(
    loops_at: list[tuple[dict[str, tuple[int, int] | None], int]], ops: int
) -> dict[str, dict[str, float]]:
    if len(loops_at) < 2 or not ops:
        return {}
    (before, start), (after, end) = loops_at
    wall = max(1, end - start)
    out = {}
    for name, first in before.items():
        last = after.get(name)
        if first is None or last is None:
            continue
        running, waiting = last[0] - first[0], last[1] - first[1]
        out[name] = {
            "ms_per_call": round(running / 1e6 / ops, 3),
            "running_pct": round(100 * running / wall, 1),
            "waiting_pct": round(100 * waiting / wall, 1),
        }
    return out
