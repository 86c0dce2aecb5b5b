"""`python -m bench`: parse flags, run the chosen benchmarks, print and write the results."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from rich.console import Console

from bench import (
    cf_workers,
    edge_workers,
    kv_reads,
    machine,
    miniflare,
    network,
    objects,
    replication,
    scale,
    seed_workers,
    sql,
    startup,
)
from bench.report import load_line, rich_table, source_revision, write_outputs
from bench.runner import Benchmark, Settings, run_benchmarks

# In run order: benchmarks that share a cluster are adjacent, so it starts once.
BENCHMARKS: tuple[Benchmark, ...] = (
    # First, and in every run (`--only` too): what the absolute goals' rows are read by.
    Benchmark(
        machine.BENCHMARK, "The machine: gRPC echo, thread hop, fsync and Python costs",
        machine.run_machine, (kv_reads.ECHO_KEY,),
    ),
    Benchmark(
        "kvget", "KvGet at a PoP vs a bare gRPC echo server", kv_reads.run_kvget,
        (kv_reads.SINGLE_POP_KEY, kv_reads.ECHO_KEY),
    ),
    Benchmark(
        "getmany", "KvGetMany keys/s at one PoP", kv_reads.run_getmany,
        (kv_reads.SINGLE_POP_KEY, kv_reads.ECHO_KEY),
    ),
    Benchmark(
        "putmany", "Sustained replication with KvPutMany", replication.run_putmany,
        (replication.DEFAULT_NODELAY_KEY,),
    ),
    Benchmark(
        "propagation", "Propagation at 1,000 writes/s vs Redis replication",
        replication.run_propagation, (replication.DEFAULT_NODELAY_KEY,),
    ),
    Benchmark(
        "probe", "The seed's latency table: edgectl probe on the default cluster",
        network.run_probe_table, (network.DEFAULT_KEY,),
    ),
    Benchmark(
        "delay", "Delay accuracy: requested vs measured RTT, 2-210 ms",
        network.run_delay_accuracy, (network.DEFAULT_KEY,),
    ),
    Benchmark(
        "plain", "Delay seen by clients that stamp nothing (gRPC stub, curl)",
        network.run_plain_delay, (network.DEFAULT_KEY,),
    ),
    Benchmark(
        "sql",
        "SQL databases: reads at the replica vs the primary, writes vs bare SQLite, replication",
        sql.run_sql,
        (
            network.DEFAULT_KEY,
            kv_reads.SINGLE_POP_KEY,
            kv_reads.ECHO_KEY,
            replication.DEFAULT_NODELAY_KEY,
        ),
    ),
    Benchmark(
        "wan", "Replication at 0 / 50 / 100 / 200 ms one-way", network.run_wan_replication,
        (network.WAN_KEY,),
    ),
    Benchmark(
        "do-hot",
        "Durable Objects: hot Counter at its owner vs a bare gRPC echo server and Miniflare",
        objects.run_hot, (objects.OBJECTS_KEY, kv_reads.ECHO_KEY, miniflare.MINIFLARE_KEY),
    ),
    Benchmark(
        "do-spread", "Durable Objects: increments spread over 1,000 Counters",
        objects.run_spread, (objects.OBJECTS_KEY, kv_reads.ECHO_KEY),
    ),
    Benchmark(
        "do-forward", "Durable Objects: a call forwarded by a non-owner PoP vs a direct one",
        objects.run_forward, (objects.OBJECTS_KEY,),
    ),
    Benchmark(
        "worker-kv",
        "Workers: HTTP through a worker doing one KV read vs bare aiohttp + LMDB and Miniflare",
        edge_workers.run_worker_kv,
        (objects.OBJECTS_KEY, edge_workers.BARE_KEY, miniflare.MINIFLARE_KEY),
    ),
    Benchmark(
        "worker-counter",
        "Workers: HTTP through a worker incrementing the hot Counter, and Miniflare's",
        edge_workers.run_worker_counter, (objects.OBJECTS_KEY, miniflare.MINIFLARE_KEY),
    ),
    Benchmark(
        "seed-workers",
        "Workers: the six seed workers vs bare aiohttp doing the same hot path",
        seed_workers.run_seed_workers, (objects.OBJECTS_KEY, seed_workers.BARE_SEED_KEY),
    ),
    Benchmark(
        "cf-workers",
        "Workers: Cloudflare's binding examples (KV, D1, Durable Objects) vs bare aiohttp",
        cf_workers.run_cf_workers, (objects.OBJECTS_KEY, cf_workers.BARE_CF_KEY),
    ),
    Benchmark(
        "coldstart", "Workers: cold start of a deploy at every PoP",
        edge_workers.run_coldstart, (objects.OBJECTS_KEY,),
    ),
    Benchmark(
        "do-failover", "Durable Objects: failover time after kill -9 of the owner",
        objects.run_failover, (objects.OBJECTS_KEY,),
    ),
    Benchmark("startup", "Cluster start and idle memory", startup.run_startup),
    Benchmark(
        "scale", "Scale: 32 PoPs — start, idle CPU per node, 1,000 writes/s", scale.run_scale
    ),
)  # fmt: skip
TABLE_WIDTH_MIN = 170
OUT_DIR_DEFAULT = Path(__file__).resolve().parent / "out"


def parse_args(argv: list[str]) -> argparse.Namespace:
    names = [benchmark.name for benchmark in BENCHMARKS]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="short durations, one round: a smoke run (~1 min)"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only these benchmarks (repeat or comma-separate): {', '.join(names)}; "
        f"{machine.BENCHMARK!r} runs in any case",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR_DEFAULT, help="report directory")
    parser.add_argument(
        "--keep-data", action="store_true", help="keep the clusters' temp dirs (for logs)"
    )
    args = parser.parse_args(argv)
    if args.only:
        chosen = {name.strip() for value in args.only for name in value.split(",") if name.strip()}
        unknown = chosen - set(names)
        if unknown:
            parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {names}")
        args.only = chosen
    return args


def chosen(only: set[str] | None) -> list[Benchmark]:
    """The benchmarks to run, in run order: all, or `only` those and the machine's."""
    return [
        benchmark
        for benchmark in BENCHMARKS
        if not only or benchmark.name in only or benchmark.name == machine.BENCHMARK
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    benchmarks = chosen(args.only)
    settings = Settings(quick=args.quick, out_dir=args.out.resolve(), keep_data=args.keep_data)
    console = Console()
    if not console.is_terminal and console.width < TABLE_WIDTH_MIN:
        # Piped (e.g. `make bench | tee`): rich would assume 80 columns and wrap every cell.
        console = Console(width=TABLE_WIDTH_MIN)
    revision = source_revision()
    started = time.monotonic()
    results = asyncio.run(run_benchmarks(benchmarks, settings, console))
    elapsed = time.monotonic() - started
    rows = [row for _, result in results for row in result.rows]
    mode = "quick" if settings.quick else "full"
    table = rich_table(rows, f"edgepop benchmarks ({mode} run, {elapsed:.0f} s)")
    table.caption = load_line(results)
    console.print(table)
    report, data = write_outputs(results, settings, elapsed, revision)
    console.print(f"report: {report}\nresults: {data}")
    # Missed goals are findings, not failures of the tool; a benchmark that crashed is.
    return 1 if any(row.status == "error" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
