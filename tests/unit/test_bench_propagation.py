"""Client send -> visible samples: which ones time the replica, which are left out."""

from __future__ import annotations

import pytest

from bench.loadgen import PacedResult, VisibilityResult, VisibilitySample
from bench.probe import HostCpuReading, cpu_shares
from bench.replication import _host_cpu_rows, _visibility


def _writes(seqs: dict[int, int]) -> PacedResult:
    return PacedResult(
        sent=100, acked=100, errors=0, unfinished=0, elapsed_s=1.0, last_seq=200,
        send_lateness_s={}, ack_latency_s={}, sampled_seqs=seqs,
    )  # fmt: skip


def _sample(
    index: int, min_seq: int, *, early: bool = True, waited_s: float = 0.01
) -> VisibilitySample:
    return VisibilitySample(index, 0.003, min_seq, early, waited_s)


def test_only_reads_that_waited_at_the_replica_for_the_writes_own_seq_are_kept() -> None:
    watched = VisibilityResult(
        samples=[
            [
                _sample(0, 101),  # expected seq: exact
                _sample(50, 150),  # took seq 152 (same batch or later): still exact
                _sample(100, 203),  # took seq 201: applied before the read woke, left out
            ],
            [
                _sample(0, 101, early=False),  # read sent after the write
                _sample(50, 152, waited_s=2.0),  # the origin answered
                _sample(150, 251),  # never acknowledged
            ],
        ],
        errors=0,
        first_error="",
        reads=7,
        send_lateness_s={},
    )
    found = _visibility(["tokyo-1", "tokyo-2"], watched, _writes({0: 101, 50: 152, 100: 201}))
    assert found["per_pop"] == {"tokyo-1": [0.003, 0.003], "tokyo-2": []}
    assert found["dropped"] == {"reordered": 1, "late_read": 1, "origin": 1, "unacknowledged": 1}
    assert found["watched"] == 3


def test_cpu_shares_are_cores_used_and_waited_for_between_two_readings() -> None:
    before = HostCpuReading(10.0, {"origin": (5.0, 1.0), "tokyo-1": (1.0, 0.5), "gone": (1, 1)})
    after = HostCpuReading(12.0, {"origin": (6.0, 2.0), "tokyo-1": (1.2, 0.5), "new": (9, 9)})
    assert cpu_shares(before, after) == {
        "origin": {"ran": 0.5, "waited": 0.5},
        "tokyo-1": {"ran": pytest.approx(0.1), "waited": 0.0},
    }
    assert cpu_shares(after, after) == {}


def test_the_host_rows_put_waiting_beside_running_and_say_when_unknown() -> None:
    host = {"origin": {"ran": 0.42, "waited": 0.40}, "pops": {"ran": 0.85, "waited": 2.9}}
    origin, pops = (row.judge() for row in _host_cpu_rows(host, "1,000 writes/s", 12))
    assert (origin.value, origin.baseline) == (pytest.approx(40.0), pytest.approx(42.0))
    assert origin.status == "info" and "12 PoPs" in pops.metric
    assert (pops.value, pops.baseline) == (pytest.approx(290.0), pytest.approx(85.0))
    unknown = [row.judge() for row in _host_cpu_rows({}, "1,000 writes/s", 12)]
    assert [row.status for row in unknown] == ["skipped", "skipped"]
