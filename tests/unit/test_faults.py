"""Link faults: the pure fault table and per-message delay (edgepop.faults), and what
`edgectl net` reads from the command line and shows (edgectl.net)."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from edge.v1 import control_plane_pb2 as cp_pb2
from edgectl import net
from edgepop.faults import (
    LINK_DELAY_MS_MAX,
    LOSS_MAX,
    RETRANSMIT_TIMEOUT_S,
    FaultError,
    FaultTable,
    LinkFault,
    crossing_delay_s,
    fault_from_pb,
    fault_to_pb,
    validate,
)
from edgepop.topology import default_topology, topology_to_pb

REGIONS = ["us-east-1", "tokyo", "london", "sydney"]
NOW = 1_000_000.0

# -- the fault table ---------------------------------------------------------------------


def test_a_fault_applies_to_both_directions_by_default() -> None:
    table = FaultTable()
    table.set("tokyo", "us-east-1", now=NOW, delay_ms=50.0)
    assert table.get("tokyo", "us-east-1", NOW) == LinkFault("tokyo", "us-east-1", 50.0)
    assert table.get("us-east-1", "tokyo", NOW) == LinkFault("us-east-1", "tokyo", 50.0)
    assert table.get("tokyo", "london", NOW) is None


def test_a_one_way_fault_leaves_the_reverse_direction_alone() -> None:
    table = FaultTable()
    table.set("tokyo", "us-east-1", now=NOW, one_way=True, jitter_ms=20.0)
    assert table.get("tokyo", "us-east-1", NOW) is not None
    assert table.get("us-east-1", "tokyo", NOW) is None


def test_setting_one_field_keeps_the_others() -> None:
    table = FaultTable()
    table.set("london", "us-east-1", now=NOW, delay_ms=100.0)
    table.set("london", "us-east-1", now=NOW, jitter_ms=10.0)
    table.set("london", "us-east-1", now=NOW, loss=0.1)
    fault = table.get("london", "us-east-1", NOW)
    assert fault == LinkFault("london", "us-east-1", 100.0, 10.0, 0.1)


def test_setting_every_field_back_to_zero_removes_the_fault() -> None:
    table = FaultTable()
    table.set("london", "us-east-1", now=NOW, partitioned=True)
    table.set("london", "us-east-1", now=NOW, partitioned=False)
    assert table.all() == []


def test_a_timed_fault_heals_by_itself() -> None:
    table = FaultTable()
    table.set("london", "us-east-1", now=NOW, duration_s=30.0, partitioned=True)
    assert table.next_expiry() == NOW + 30.0
    assert table.get("london", "us-east-1", NOW + 29.9) is not None
    # Ignored from its expiry time on, even before the table is pruned.
    assert table.get("london", "us-east-1", NOW + 30.0) is None
    assert not table.expire(NOW + 29.9)
    assert table.expire(NOW + 30.0)
    assert table.all() == []
    assert table.next_expiry() == 0.0


def test_clear_one_pair_or_everything() -> None:
    table = FaultTable()
    table.set("london", "us-east-1", now=NOW, delay_ms=1.0)
    table.set("tokyo", "us-east-1", now=NOW, delay_ms=1.0)
    table.clear("us-east-1", "london")
    assert [(f.from_region, f.to_region) for f in table.all()] == [
        ("tokyo", "us-east-1"),
        ("us-east-1", "tokyo"),
    ]
    table.clear("tokyo", "us-east-1", one_way=True)
    assert [(f.from_region, f.to_region) for f in table.all()] == [("us-east-1", "tokyo")]
    table.clear()
    assert table.all() == []


def test_validate_names_what_is_wrong() -> None:
    validate(LinkFault("tokyo", "us-east-1", 10.0, 5.0, 0.5), REGIONS)
    with pytest.raises(FaultError, match="unknown region 'mars'"):
        validate(LinkFault("mars", "us-east-1"), REGIONS)
    with pytest.raises(FaultError, match="delay_ms must be within"):
        validate(LinkFault("tokyo", "us-east-1", delay_ms=-1.0), REGIONS)
    with pytest.raises(FaultError, match="loss"):
        validate(LinkFault("tokyo", "us-east-1", loss=LOSS_MAX + 0.01), REGIONS)


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e308, LINK_DELAY_MS_MAX + 1])
def test_validate_refuses_non_finite_and_absurd_delays(value: float) -> None:
    """Found by the fuzz: an infinite delay held every call across the pair."""
    with pytest.raises(FaultError, match="delay_ms"):
        validate(LinkFault("tokyo", "us-east-1", delay_ms=value), REGIONS)
    with pytest.raises(FaultError, match="jitter_ms"):
        validate(LinkFault("tokyo", "us-east-1", jitter_ms=value), REGIONS)
    with pytest.raises(FaultError, match="loss"):
        validate(LinkFault("tokyo", "us-east-1", loss=math.nan), REGIONS)


def test_wire_form_round_trips() -> None:
    fault = LinkFault("tokyo", "us-east-1", 10.0, 5.0, 0.25, True, NOW)
    assert fault_from_pb(fault_to_pb(fault)) == fault


# -- one message's crossing ----------------------------------------------------------------


def test_without_a_fault_a_message_takes_the_base_delay() -> None:
    assert crossing_delay_s(0.085, None, random.Random(1)) == 0.085


def test_delay_adds_one_way_latency_on_top_of_the_base() -> None:
    fault = LinkFault("a", "b", delay_ms=100.0)
    assert crossing_delay_s(0.0, fault, random.Random(1)) == pytest.approx(0.1)
    assert crossing_delay_s(0.085, fault, random.Random(1)) == pytest.approx(0.185)


def test_jitter_is_normal_with_the_given_standard_deviation_and_never_beats_the_base() -> None:
    rng = random.Random(7)
    fault = LinkFault("a", "b", delay_ms=50.0, jitter_ms=20.0)
    samples = [crossing_delay_s(0.085, fault, rng) for _ in range(20_000)]
    assert min(samples) >= 0.085
    # Clipping at the base (2.5 standard deviations below the mean) barely shows.
    assert statistics.mean(samples) == pytest.approx(0.135, abs=0.001)
    assert statistics.stdev(samples) == pytest.approx(0.020, rel=0.03)


def test_jitter_without_delay_is_clipped_to_a_half_normal() -> None:
    rng = random.Random(3)
    fault = LinkFault("a", "b", jitter_ms=10.0)
    samples = [crossing_delay_s(0.0, fault, rng) for _ in range(20_000)]
    assert min(samples) == 0.0
    # Half the draws are clipped to the base: the median is the base itself.
    assert statistics.median(samples) == pytest.approx(0.0, abs=0.0005)


def test_each_loss_costs_a_retransmission_timeout_doubling() -> None:
    rng = random.Random(11)
    fault = LinkFault("a", "b", loss=0.2)
    samples = [crossing_delay_s(0.05, fault, rng) for _ in range(50_000)]
    extra = [round(sample - 0.05, 6) for sample in samples]
    share = {cost: extra.count(cost) / len(extra) for cost in set(extra)}
    rto = RETRANSMIT_TIMEOUT_S
    assert share[0.0] == pytest.approx(0.8, abs=0.01)
    assert share[rto] == pytest.approx(0.2 * 0.8, abs=0.01)
    assert share[round(rto + 2 * rto, 6)] == pytest.approx(0.04 * 0.8, abs=0.005)


# -- edgectl net: arguments ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [("100", 100.0), ("100ms", 100.0), ("0.1s", 100.0), ("2.5", 2.5), (" 20 ms ", 20.0)],
)
def test_parse_ms(text: str, ms: float) -> None:
    assert net.parse_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "fast", "-5", "10 us", "inf", "nan", "120s"])
def test_parse_ms_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        net.parse_ms(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("2m", 120.0), ("500ms", 0.5), ("30", 30.0), ("1.5", 1.5), ("1h", 3600.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert net.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["0", "0s", "-1s", "soon", "2 days", "25h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        net.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "loss"), [("0.2", 0.2), ("20%", 0.2), ("0", 0.0), ("2.5%", 0.025), ("1%", 0.01)]
)
def test_parse_loss(text: str, loss: float) -> None:
    assert net.parse_loss(text) == pytest.approx(loss)


@pytest.mark.parametrize("text", ["20", "1.5", "99%", "-0.1", "lots"])
def test_parse_loss_rejects(text: str) -> None:
    # `20` could be 20% or a typo: a bare number above 1 is refused, not guessed.
    with pytest.raises(ValueError):
        net.parse_loss(text)


def test_a_fault_request_sends_only_what_its_kind_names() -> None:
    # The control plane merges fields that are present: `jitter` must not clear a delay.
    jitter = net.fault_request("jitter", "tokyo", "london", jitter_ms=20.0, delay_ms=100.0)
    assert jitter.HasField("jitter_ms") and not jitter.HasField("delay_ms")
    delay = net.fault_request("delay", "a", "b", delay_ms=100.0, jitter_ms=5.0, duration_s=30.0)
    assert (delay.delay_ms, delay.jitter_ms, delay.duration_s) == (100.0, 5.0, 30.0)
    assert not delay.HasField("loss") and not delay.HasField("partitioned")
    loss = net.fault_request("loss", "a", "b", loss=0.2, one_way=True)
    assert loss.loss == pytest.approx(0.2) and loss.one_way and not loss.HasField("delay_ms")
    cut = net.fault_request("partition", "a", "b", delay_ms=7.0)
    assert cut.partitioned and not cut.HasField("delay_ms") and cut.duration_s == 0.0


@pytest.mark.parametrize(
    ("kind", "values"), [("delay", {}), ("jitter", {"delay_ms": 1.0}), ("loss", {}), ("cut", {})]
)
def test_a_fault_request_refuses_a_kind_without_its_value(
    kind: str, values: dict[str, float]
) -> None:
    with pytest.raises(ValueError):
        net.fault_request(kind, "a", "b", **values)


# -- edgectl net: showing ----------------------------------------------------------------------


def pb_fault(a: str, b: str, **fields: float | bool) -> cp_pb2.LinkFault:
    return cp_pb2.LinkFault(from_region=a, to_region=b, **fields)  # type: ignore[arg-type]


def test_a_symmetric_fault_is_one_row_and_a_one_way_fault_its_own() -> None:
    faults = [
        pb_fault("tokyo", "us-east-1", delay_ms=50.0),
        pb_fault("us-east-1", "tokyo", delay_ms=50.0),
        pb_fault("london", "us-east-1", loss=0.2),
        pb_fault("sydney", "us-east-1", jitter_ms=5.0),
        pb_fault("us-east-1", "sydney", jitter_ms=9.0),
    ]
    rows = net.fault_rows(faults)
    assert [row.pair for row in rows] == [
        "london -> us-east-1",
        "sydney -> us-east-1",
        "tokyo <-> us-east-1",
        "us-east-1 -> sydney",
    ]


def test_fault_json_says_when_it_heals() -> None:
    timed = pb_fault("tokyo", "us-east-1", partitioned=True, expires_at=NOW + 12.5)
    data = net.fault_json(timed, NOW)
    assert data["partitioned"] is True
    assert data["heals_in_s"] == 12.5
    assert data["expires_at"] == NOW + 12.5
    forever = net.fault_json(pb_fault("tokyo", "us-east-1", delay_ms=5.0), NOW)
    assert forever["heals_in_s"] is None
    assert forever["expires_at"] is None


def test_healed_faults_are_not_in_force() -> None:
    faults = [
        pb_fault("a", "b", delay_ms=1.0, expires_at=NOW - 0.1),
        pb_fault("c", "d", delay_ms=1.0, expires_at=NOW + 0.1),
        pb_fault("e", "f", delay_ms=1.0),
    ]
    assert [f.from_region for f in net.in_force(faults, NOW)] == ["c", "e"]


def test_describe_a_fault_in_words() -> None:
    fault = pb_fault("a", "b", delay_ms=100.0, jitter_ms=20.0, loss=0.2, partitioned=True)
    assert net.describe(fault) == "partitioned, +100 ms, jitter 20 ms, loss 20%"
    assert net.describe(pb_fault("a", "b")) == "no fault"


def test_rtt_matrix_has_the_seed_s_figures_and_edge_rtt_on_the_diagonal() -> None:
    matrix = net.rtt_matrix(topology_to_pb(default_topology()))
    assert matrix.rtt_ms[("tokyo", "us-east-1")] == 170.0
    assert matrix.rtt_ms[("us-east-1", "tokyo")] == 170.0
    assert matrix.rtt_ms[("tokyo", "tokyo")] == 8.0
    data = matrix.to_json()
    assert data["rtt_ms"]["sydney"]["us-east-1"] == 210.0
    assert data["origin_region"] == "us-east-1"
    assert set(data["rtt_ms"]) == set(data["regions"])
