"""What edgectl shows: rich tables for people, plain JSON for programs.

Data goes to stdout (tables, values, JSON); progress, timings of a single call and
errors go to stderr, so `edgectl kv get KEY > file` stores exactly the value while
the terminal still shows where it was read and how long it took.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import kv_pb2, objects_pb2
from edgectl import deploys, net, probe
from edgectl import objects as do
from edgectl.client import NodeSample, Target, role_name
from edgepop.host_cpu import wait_is_notable

# Piped output is not cut to 80 columns: a table of addresses must stay whole in a log.
PIPED_WIDTH = 200
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else PIPED_WIDTH)
stderr = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else PIPED_WIDTH)


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, no colour, no wrapping."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    # Not through rich: markup in a server's message must print as it is.
    sys.stderr.write(f"error: {message}\n")


def fmt_ms(ms: float) -> str:
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def fmt_health(healthy: bool | None) -> Text:
    if healthy is None:
        return Text("?", style="yellow")
    return Text("healthy", style="green") if healthy else Text("down", style="red")


def fmt_expiration(expiration: int) -> str:
    if not expiration:
        return ""
    return fmt_unix(expiration)


def fmt_unix(at: float) -> str:
    """A unix time as UTC, to the second: `2026-11-27 14:20:57Z`."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def metadata_value(metadata_json: str) -> Any:
    """Stored metadata as JSON data (None when there is none)."""
    if not metadata_json:
        return None
    try:
        return json.loads(metadata_json)
    except json.JSONDecodeError:
        return metadata_json


# -- cluster and nodes -----------------------------------------------------------------


def start_progress() -> Progress:
    """The `cluster up` progress bar: nodes ready x/N (on stderr)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("nodes ready"),
        TimeElapsedColumn(),
        console=stderr,
        transient=False,
        # In a log a bar is noise; the command prints one line when it is done instead.
        disable=not stderr.is_terminal,
    )


def status_table(rows: Sequence[dict[str, Any]], title: str = "") -> Table:
    """`cluster status`: every node with its process and health."""
    table = Table(title=title or None, title_justify="left")
    for column in ("node", "role", "region", "pid", "health", "grpc", "http", "metrics"):
        table.add_column(column, justify="right" if column == "pid" else "left")
    for row in rows:
        table.add_row(
            row["name"],
            row["role"],
            row["region"],
            str(row["pid"]) if row["pid"] else Text("stopped", style="red"),
            fmt_health(row["healthy"]),
            row["grpc_address"],
            row["http_address"],
            row["metrics_address"],
        )
    return table


def node_info_json(info: cp_pb2.NodeInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "role": role_name(info.role),
        "region": info.region,
        "healthy": info.healthy,
        "grpc_address": info.grpc_address,
        "http_address": info.http_address,
        "metrics_address": info.metrics_address,
        "pid": info.pid,
        "incarnation": info.incarnation,
        "last_heartbeat_age_s": round(info.last_heartbeat_age_s, 3),
    }


def nodes_table(infos: Iterable[cp_pb2.NodeInfo]) -> Table:
    """`nodes`: the control plane's registry."""
    table = Table()
    for column in ("node", "role", "region", "health", "heartbeat", "inc", "pid"):
        table.add_column(
            column, justify="left" if column in ("node", "role", "region") else "right"
        )
    table.add_column("grpc")
    table.add_column("http")
    table.add_column("metrics")
    for info in infos:
        table.add_row(
            info.name,
            role_name(info.role),
            info.region,
            fmt_health(info.healthy),
            f"{info.last_heartbeat_age_s:.1f} s ago",
            str(info.incarnation),
            str(info.pid or ""),
            info.grpc_address,
            info.http_address,
            info.metrics_address,
        )
    return table


def live_view(samples: Sequence[NodeSample], data_dir: Path, started_at: float) -> RenderableType:
    """The foreground `cluster up` screen, redrawn about once a second."""
    table = Table(
        title=f"edgepop cluster · {data_dir} · up {_duration(time.monotonic() - started_at)}",
        title_justify="left",
        caption="seq: applied (PoP) / head (origin) · behind: entries not yet applied · "
        "lag: staleness bound · req/s excludes this view's polls · cpu: % of a core · "
        "cpu wait: % of a second its threads waited for a CPU (yellow: the host's queue "
        "adds to what this node measures) · workers: loaded · http: ingress · "
        "Ctrl-C stops every node",
        caption_justify="left",
    )
    table.add_column("node")
    table.add_column("role")
    table.add_column("region")
    table.add_column("pid", justify="right")
    table.add_column("health")
    table.add_column("seq", justify="right")
    table.add_column("behind", justify="right")
    table.add_column("lag", justify="right")
    table.add_column("req/s", justify="right")
    table.add_column("cpu", justify="right")
    table.add_column("cpu wait", justify="right")
    table.add_column("workers", justify="right")
    table.add_column("http")
    for sample in samples:
        style = "dim" if sample.stale else ""
        if not sample.alive:
            table.add_row(
                sample.name,
                sample.role,
                sample.region,
                Text("stopped", style="red"),
                fmt_health(False),
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                sample.http_address,
            )
            continue
        behind = ""
        lag = ""
        if sample.role == "pop":
            if sample.seq is not None and sample.head_seq is not None:
                behind = str(max(0, sample.head_seq - sample.seq))
            if sample.lag_s is not None:
                lag = fmt_ms(sample.lag_s * 1000)
                if sample.replicating is False:
                    lag += " (cut off)"
        table.add_row(
            sample.name,
            sample.role,
            sample.region,
            str(sample.pid),
            fmt_health(sample.healthy),
            "" if sample.seq is None else str(sample.seq),
            behind,
            lag,
            "" if sample.requests_per_s is None else f"{sample.requests_per_s:.1f}",
            "" if sample.cpu_percent is None else f"{sample.cpu_percent:.0f}%",
            fmt_cpu_wait(sample.cpu_percent, sample.cpu_wait_percent),
            "" if sample.workers is None else str(sample.workers),
            sample.http_address,
            style=style,
        )
    return table


def fmt_cpu_wait(cpu_percent: float | None, wait_percent: float | None) -> Text | str:
    if wait_percent is None:
        return ""
    style = "yellow" if wait_is_notable(cpu_percent, wait_percent) else ""
    return Text(f"{wait_percent:.0f}%", style=style)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# -- kv --------------------------------------------------------------------------------


def via(target: Target, latency_ms: float) -> str:
    """Where a KV call went and how long it took, e.g. `tokyo-1 (tokyo) · 8.4 ms`."""
    where = f"{target.name} ({target.region})"
    if target.caller_region != target.region:
        where += f" from {target.caller_region}"
    return f"{where} · {fmt_ms(latency_ms)}"


def kv_list_table(keys: Sequence[kv_pb2.KvListKey]) -> Table:
    table = Table()
    table.add_column("key")
    table.add_column("expiration")
    table.add_column("metadata")
    for key in keys:
        table.add_row(key.name, fmt_expiration(key.expiration), key.metadata_json)
    return table


# -- Durable Objects -------------------------------------------------------------------


def object_via(response: objects_pb2.ObjectCallResponse, target: Target, latency_ms: float) -> str:
    """Who ran an object call: `tokyo-1 · epoch 1 · 8.9 ms`, plus the entry PoP when
    another one forwarded it and the caller's region when it is elsewhere."""
    parts = [response.node or "?", f"epoch {response.epoch}"]
    if target.name != response.node:
        parts.append(f"via {target.name} ({target.region})")
    if target.caller_region != target.region:
        parts.append(f"from {target.caller_region}")
    parts.append(fmt_ms(latency_ms))
    return " · ".join(parts)


def placements_table(placements: Sequence[objects_pb2.Placement]) -> Table:
    """`do placements`: where each object lives and which node holds its copy."""
    table = Table(
        caption="id: first 12 hex digits (--json: all 64)",
        caption_justify="left",
    )
    table.add_column("namespace")
    table.add_column("id")
    table.add_column("owner")
    table.add_column("standby")
    table.add_column("epoch", justify="right")
    for placement in placements:
        table.add_row(
            placement.namespace,
            do.short_id(placement.id),
            placement.owner,
            placement.standby or Text("none", style="yellow"),
            str(placement.epoch),
        )
    return table


# -- workers ---------------------------------------------------------------------------


def rollout_progress() -> Progress:
    """A deploy's rollout: PoPs serving the new version x/N (on stderr, gone when done)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("PoPs"),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )


def cold_start_text(values: Sequence[float]) -> str:
    stats = deploys.cold_start_json(values)
    if stats is None:
        return ""
    return f"{stats['median']:.1f} / {stats['max']:.1f}"


def rollout_text(rollout: deploys.Rollout) -> Text:
    """`12/12 PoPs`, or `10/12 PoPs (lag: tokyo-2 (has 1a2b…), …)` in yellow."""
    if rollout.done:
        return Text(rollout.coverage, style="green" if rollout.total else "")
    return Text(f"{rollout.coverage} (lag: {rollout.lag_text()})", style="yellow")


def workers_table(summaries: Sequence[deploys.WorkerSummary]) -> Table:
    """`workers`: every version of every worker, and the PoPs serving each now."""
    table = Table(
        caption="PoPs: healthy PoPs serving the version now · cold start: median / max",
        caption_justify="left",
    )
    table.add_column("worker")
    table.add_column("version")
    table.add_column("active")
    table.add_column("deployed")
    table.add_column("routes")
    table.add_column("PoPs")
    table.add_column("cold start ms", justify="right")
    for summary in summaries:
        for index, row in enumerate(summary.versions):
            version = row.version
            if version.active:
                pops: RenderableType = rollout_text(row.rollout)
            else:
                pops = ", ".join(row.rollout.ready)
            table.add_row(
                summary.name if index == 0 else "",
                deploys.short(version.version),
                Text("active", style="green") if version.active else "",
                fmt_unix(version.deployed_at),
                ", ".join(version.routes),
                pops,
                cold_start_text(row.rollout.cold_start_ms),
                style="" if version.active else "dim",
            )
    return table


# -- net -------------------------------------------------------------------------------


def _heals_in(seconds: float | None) -> str:
    return "until healed" if seconds is None else f"in {seconds:.1f} s"


def faults_table(faults: Sequence[cp_pb2.LinkFault], now: float) -> Table:
    """`net show`: the faults in force; a pair faulted alike both ways is one row."""
    table = Table(
        title="link faults in force",
        title_justify="left",
        caption="delay: extra one-way delay per message · jitter: std-dev per message · "
        "loss: chance a message is lost (each loss +200 ms, doubling)",
        caption_justify="left",
    )
    table.add_column("pair")
    table.add_column("delay", justify="right")
    table.add_column("jitter", justify="right")
    table.add_column("loss", justify="right")
    table.add_column("partitioned")
    table.add_column("heals")
    for row in net.fault_rows(faults):
        fault = row.fault
        table.add_row(
            row.pair,
            f"+{fault.delay_ms:g} ms" if fault.delay_ms else "",
            f"{fault.jitter_ms:g} ms" if fault.jitter_ms else "",
            f"{fault.loss * 100:.4g}%" if fault.loss else "",
            Text("partitioned", style="red") if fault.partitioned else "",
            _heals_in(net.heals_in_s(fault, now)),
        )
    return table


def rtt_matrix_table(matrix: net.RttMatrix, faulted: set[frozenset[str]]) -> Table:
    """`net show --matrix`: base RTT (ms) from a caller's region (row) to a server's."""
    table = Table(
        title="base round-trip time (ms), caller region -> server region",
        title_justify="left",
        caption=f"diagonal: a client to its own region's PoP (node to node within a site: "
        f"{matrix.intra_site_rtt_ms:g} ms) · origin: {matrix.origin_region} · "
        "* a fault adds to this pair now (net show)",
        caption_justify="left",
    )
    table.add_column("from \\ to")
    for region in matrix.regions:
        table.add_column(region, justify="right")
    for a in matrix.regions:
        cells: list[RenderableType] = []
        for b in matrix.regions:
            rtt = matrix.rtt_ms.get((a, b))
            text = "" if rtt is None else f"{rtt:.0f}" if rtt >= 10 else f"{rtt:.1f}"
            if a == b:
                cells.append(Text(text, style="dim"))
            elif frozenset((a, b)) in faulted:
                cells.append(Text(f"{text}*", style="yellow"))
            else:
                cells.append(text)
        table.add_row(a, *cells)
    return table


# -- probe -----------------------------------------------------------------------------


def probe_progress() -> Progress:
    """`probe` progress: one bar per region (on stderr, gone once the table prints)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("calls"),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )


def _deviation(measurement: probe.Measurement) -> Text:
    pct = measurement.deviation_pct
    text = f"{measurement.deviation_ms:+.1f}"
    if pct is not None:
        text += f" ({pct:+.1f}%)"
    return Text(text, style="green" if measurement.within_tolerance else "red")


def probe_table(results: Sequence[probe.RegionResult]) -> Table:
    """The seed's table, measured: medians against the topology's targets."""
    origin_region = results[0].origin_region if results else ""
    calls = len(results[0].edge.samples_ms) if results else 0
    table = Table(
        title=f"round-trip latency by region: median of {calls} calls (ms)",
        title_justify="left",
        caption="dev: median - target · ok: within max(1 ms, 5%) of the target · "
        f"{probe.SEQUENTIAL_CALLS} calls: saving of {probe.SEQUENTIAL_CALLS} sequential calls",
        caption_justify="left",
    )
    table.add_column("user in")
    table.add_column("PoP")
    table.add_column(f"origin: {origin_region}", justify="right")
    table.add_column("target", justify="right")
    table.add_column("dev", justify="right")
    table.add_column("edge PoP", justify="right")
    table.add_column("target", justify="right")
    table.add_column("dev", justify="right")
    table.add_column("saving", justify="right")
    table.add_column(f"{probe.SEQUENTIAL_CALLS} calls", justify="right")
    table.add_column("ok")
    for result in results:
        pop = result.pop
        if result.pop_region != result.region:
            # Routed out of the user's region: that region's PoPs are down.
            pop += f" ({result.pop_region})"
        table.add_row(
            result.city or result.region,
            pop,
            f"{result.to_origin.median_ms:.1f}",
            f"{result.to_origin.target_ms:g}",
            _deviation(result.to_origin),
            f"{result.edge.median_ms:.1f}",
            f"{result.edge.target_ms:g}",
            _deviation(result.edge),
            f"{result.saving_ms:.1f}",
            f"{result.sequential_saving_ms:.0f}",
            Text("yes", style="green") if result.within_tolerance else Text("NO", style="red"),
        )
    return table
