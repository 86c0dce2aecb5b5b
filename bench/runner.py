"""What every benchmark shares: settings, progress display, load-generator processes, clusters.

A benchmark is an async function taking a `Context` and returning a `BenchResult`
(table rows, JSON details, plot files and a paragraph on method). The context starts
clusters lazily by key and the runner stops each one as soon as no remaining benchmark
needs it, and all of them in any case at the end: a failed benchmark never leaves
processes behind. Load generators run in a pool of spawned load-generator processes
(`LOADGEN_PROCESSES`) so that no client shares an event loop with the servers or with the
bench's own scrapers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from bench import loadgen
from bench.probe import machine_busy_seconds, tree_cpu_seconds
from bench.stats import Row
from edgectl.launcher import Cluster

T = TypeVar("T")

# Two load generators: the Redis baseline runs its writer and its subscribers side by side.
LOADGEN_PROCESSES = 2
PROGRESS_REFRESH_PER_S = 4
ERROR_NOTE_CHARS_MAX = 100


@dataclass(frozen=True)
class Settings:
    quick: bool
    out_dir: Path
    keep_data: bool = False

    def pick(self, full: T, quick: T) -> T:
        """The full-run value, or the --quick one."""
        return quick if self.quick else full


@dataclass
class BenchResult:
    rows: list[Row]
    # JSON-able measurements behind the rows (results.json and the report's details).
    details: dict[str, Any] = field(default_factory=dict)
    # None stands for a plot that failed to draw (it is left out of the report).
    plots: list[Path | None] = field(default_factory=list)
    # Markdown: what the benchmark measures and how.
    method: str = ""
    # Markdown: extra lines for the report (per-node tables, caveats).
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    # Average cores busy during the run: by the bench's own processes, by everything else.
    cores_ours: float = 0.0
    cores_others: float = 0.0


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    run: Callable[[Context], Awaitable[BenchResult]]
    # Keys of the shared resources (clusters, servers) it uses, to release them early.
    resources: tuple[str, ...] = ()


class Ui:
    """Rich progress: one bar for the whole run, one for the current phase."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=PROGRESS_REFRESH_PER_S,
        )
        self.overall = self.progress.add_task("benchmarks", total=total)
        self.phase: TaskID | None = None

    def __enter__(self) -> Ui:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._end_phase()
        self.progress.__exit__(None, None, None)

    def begin(self, title: str) -> None:
        self.progress.update(self.overall, description=f"[bold]{title}")

    def advance(self) -> None:
        self.progress.advance(self.overall)

    def log(self, message: str) -> None:
        self.progress.console.print(message)

    def _end_phase(self) -> None:
        if self.phase is not None:
            self.progress.remove_task(self.phase)
            self.phase = None

    def _start_phase(self, label: str, total: float | None) -> TaskID:
        self._end_phase()
        self.phase = self.progress.add_task(f"  {label}", total=total)
        return self.phase

    async def timed(self, label: str, seconds: float, work: Awaitable[T]) -> T:
        """Await `work`, showing a bar that fills over the `seconds` it should take."""
        task = self._start_phase(label, max(seconds, 0.01))
        future = asyncio.ensure_future(work)
        started = time.monotonic()
        try:
            while not future.done():
                await asyncio.wait({future}, timeout=0.2)
                self.progress.update(task, completed=min(seconds, time.monotonic() - started))
            return future.result()
        finally:
            if not future.done():
                future.cancel()
            self._end_phase()

    async def step(self, label: str, work: Awaitable[T]) -> T:
        """Await `work` of unknown length, with a spinner."""
        self._start_phase(label, None)
        try:
            return await work
        finally:
            self._end_phase()

    def counter(self, label: str, total: int) -> Callable[[str, int, int], None]:
        """A progress callback for Cluster.up (name, ready, total), from any thread."""
        task = self._start_phase(label, total)

        def update(name: str, ready: int, of: int) -> None:
            self.progress.update(task, completed=ready, total=of)

        return update


class Context:
    def __init__(self, settings: Settings, ui: Ui, work_dir: Path) -> None:
        self.settings = settings
        self.ui = ui
        self.work_dir = work_dir
        self.pool = concurrent.futures.ProcessPoolExecutor(
            LOADGEN_PROCESSES, mp_context=multiprocessing.get_context("spawn")
        )
        self._resources: dict[str, tuple[Any, Callable[[], None]]] = {}
        self._counter = 0
        # Shared between benchmarks that use one resource (e.g. keys loaded once).
        self.state: dict[str, Any] = {}

    @property
    def quick(self) -> bool:
        return self.settings.quick

    def pick(self, full: T, quick: T) -> T:
        return self.settings.pick(full, quick)

    def new_dir(self, name: str) -> Path:
        self._counter += 1
        path = self.work_dir / f"{self._counter:02d}-{name}"
        path.mkdir(parents=True)
        return path

    async def warm_loadgens(self) -> None:
        """Start the load-generator processes (imports and all) before anything is timed."""
        await asyncio.gather(
            *(self.in_loadgen(loadgen.warm) for _ in range(LOADGEN_PROCESSES))  # type: ignore[arg-type]
        )

    async def in_loadgen(self, function: Callable[[Any], T], spec: Any = None) -> T:
        """Run `function(spec)` in a load-generator process."""
        if spec is None:
            return await asyncio.wrap_future(self.pool.submit(function))  # type: ignore[call-arg]
        return await asyncio.wrap_future(self.pool.submit(function, spec))

    # -- shared resources ----------------------------------------------------------------

    async def resource(
        self, key: str, start: Callable[[], Awaitable[tuple[T, Callable[[], None]]]]
    ) -> T:
        """The resource called `key`, started by `start` (-> value, stop) on first use."""
        if key not in self._resources:
            self._resources[key] = await start()
        return self._resources[key][0]  # type: ignore[no-any-return]

    async def cluster(self, key: str, topology: dict[str, Any] | None) -> Cluster:
        """A running cluster of `topology` (None = the built-in default), shared by key."""

        async def start() -> tuple[Cluster, Callable[[], None]]:
            data_dir = self.new_dir(key)
            topology_file = None
            if topology is not None:
                topology_file = data_dir / "topology.yaml"
                topology_file.write_text(yaml.safe_dump(topology))
            cluster = Cluster(data_dir / "cluster", topology_file=topology_file)
            nodes = len(cluster.topology.node_specs())
            progress = self.ui.counter(f"starting cluster {key} ({nodes} processes)", nodes)
            try:
                await asyncio.to_thread(cluster.up, progress=progress)
            finally:
                self.ui._end_phase()
            return cluster, cluster.down

        return await self.resource(key, start)

    async def release(self, key: str) -> None:
        entry = self._resources.pop(key, None)
        if entry is not None:
            await self.ui.step(f"stopping {key}", asyncio.to_thread(entry[1]))

    async def release_all(self, keep: Sequence[str] = ()) -> None:
        for key in list(self._resources):
            if key not in keep:
                await self.release(key)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


async def run_benchmarks(
    benchmarks: Sequence[Benchmark], settings: Settings, console: Console
) -> list[tuple[Benchmark, BenchResult]]:
    """Run each benchmark in order; a failure becomes an error row, never a stuck process."""
    results: list[tuple[Benchmark, BenchResult]] = []
    work_dir = Path(tempfile.mkdtemp(prefix="edgepop-bench-"))
    with Ui(console, len(benchmarks)) as ui:
        context = Context(settings, ui, work_dir)
        try:
            await ui.step("starting load-generator processes", context.warm_loadgens())
            for index, benchmark in enumerate(benchmarks):
                ui.begin(f"{benchmark.title} ({index + 1}/{len(benchmarks)})")
                started = time.monotonic()
                busy, ours = machine_busy_seconds(), tree_cpu_seconds(os.getpid())
                try:
                    result = await benchmark.run(context)
                except Exception as error:
                    detail = traceback.format_exc()
                    ui.log(f"[red]{benchmark.name} failed:[/red] {detail}")
                    # The table gets one line; the report keeps the whole traceback.
                    summary = f"{type(error).__name__}: {str(error).strip()}".splitlines()[0]
                    summary = summary[:ERROR_NOTE_CHARS_MAX]
                    result = BenchResult(
                        rows=[Row(benchmark.name, "run", "", status="error", note=summary)],
                        details={"error": detail},
                    )
                result.elapsed_s = time.monotonic() - started
                result.plots = [plot for plot in result.plots if plot is not None]
                # The machine is shared: say how much of it others took meanwhile.
                ours = tree_cpu_seconds(os.getpid()) - ours
                busy = machine_busy_seconds() - busy
                result.cores_ours = ours / result.elapsed_s
                result.cores_others = max(0.0, busy - ours) / result.elapsed_s
                for row in result.rows:
                    row.judge()
                results.append((benchmark, result))
                # Stop what no later benchmark needs: idle clusters still use CPU.
                needed = {key for later in benchmarks[index + 1 :] for key in later.resources}
                await context.release_all(keep=sorted(needed))
                ui.advance()
        finally:
            await context.release_all()
            context.close()
            if not settings.keep_data:
                shutil.rmtree(work_dir, ignore_errors=True)
            else:
                console.print(f"cluster data kept in {work_dir}")
    return results
