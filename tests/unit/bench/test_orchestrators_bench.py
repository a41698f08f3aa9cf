"""The orchestrator-replica benchmark's own arithmetic and log reading."""

from __future__ import annotations

import pytest

from bench.orchestrators import (
    Round,
    comparison,
    cpu_per_job,
    event_time,
    holders,
    limit,
    medians,
    process_kind,
    takeover_delays,
)


def stamp(seconds: float) -> str:
    """An ISO timestamp `seconds` after 2026-01-01 00:00 UTC, as structlog writes it."""
    whole, frac = divmod(seconds, 1)
    return f"2026-01-01T00:{int(whole) // 60:02d}:{int(whole) % 60:02d}.{round(frac * 1e6):06d}Z"


T0 = event_time({"timestamp": stamp(0)})


def claimed(job: str, at: float) -> dict[str, object]:
    return {"event": "job.claimed", "job_id": job, "timestamp": stamp(at)}


def succeeded(job: str, at: float) -> dict[str, object]:
    return {"event": "job.succeeded", "job_id": job, "timestamp": stamp(at)}


def test_event_time_reads_structlog_iso_utc() -> None:
    assert event_time({"timestamp": stamp(61.25)}) - T0 == pytest.approx(61.25)


def test_rates_and_medians_per_group() -> None:
    rounds = [
        Round("a", 100, accept_s=1.0, complete_s=4.0),
        Round("a", 100, accept_s=2.0, complete_s=5.0),
        Round("a", 100, accept_s=4.0, complete_s=10.0),
        Round("b", 50, accept_s=1.0, complete_s=2.0),
    ]
    assert rounds[0].accepted_per_s == 100 and rounds[0].completed_per_s == 25
    assert medians(rounds, lambda r: r.accepted_per_s) == {"a": 50.0, "b": 50.0}
    assert medians(rounds, lambda r: r.completed_per_s) == {"a": 20.0, "b": 25.0}


def test_cpu_per_job_is_milliseconds_per_job_median_over_rounds() -> None:
    rounds = [
        Round("a", 10, 1, 1, {"orchestrators": 0.1, "stages": 0.2}),
        Round("a", 20, 1, 1, {"orchestrators": 0.4, "stages": 0.2}),
        Round("a", 10, 1, 1, {"orchestrators": 0.3, "stages": 0.0}),
    ]
    got = cpu_per_job(rounds)["a"]
    assert got["orchestrators"] == pytest.approx(20.0)  # 10, 20, 30 ms per job
    assert got["stages"] == pytest.approx(10.0)  # 20, 10, 0


def test_holders_is_each_jobs_latest_claim_not_yet_done() -> None:
    events = {
        "a": [claimed("j1", 1), claimed("j2", 1), succeeded("j2", 2), claimed("x", 1)],
        "b": [claimed("j3", 1.5), claimed("j1", 5)],  # j1 taken over by b
    }
    assert holders(events, ["j1", "j2", "j3", "j4"]) == {"j1": "b", "j3": "b"}


def test_takeover_delay_is_kill_to_the_first_claim_by_another_replica() -> None:
    kill = T0 + 10
    events = {
        "dead": [claimed("j1", 1), claimed("j2", 1), claimed("j1", 11)],  # its own: ignored
        "b": [claimed("j1", 0.5), claimed("j1", 13.5), claimed("j1", 20)],  # before the kill: no
        "c": [claimed("j2", 12.25), claimed("j9", 12)],  # j9: not the dead one's
    }
    got = takeover_delays(events, "dead", ["j1", "j2", "j3"], kill)
    assert got == {"j1": pytest.approx(3.5), "j2": pytest.approx(2.25)}  # j3: never taken


def test_process_kinds() -> None:
    orch = ["/v/bin/python", "-m", "stageflow.orchestrator", "--port", "0"]
    assert process_kind(orch, own_pid=1, pid=2) == "orchestrators"
    assert process_kind(["/usr/lib/postgresql/15/bin/postgres", "-D", "x"], 1, 3) == "PostgreSQL"
    assert process_kind(["postgres: stageflow one 127.0.0.1(5) idle"], 1, 4) == "PostgreSQL"
    assert process_kind(["/v/bin/python", "-m", "stageflow.stage", "upscale"], 1, 5) == "stages"
    assert process_kind(orch, own_pid=7, pid=7) == "bench clients"


def test_the_reading_follows_the_numbers() -> None:
    assert "saturated" in limit(0.95, replica_cores=0.2, ours=0.5, cores=2)
    assert "event loop" in limit(0.6, replica_cores=0.9, ours=1.0, cores=2)
    assert "other than CPU" in limit(0.3, replica_cores=0.2, ours=0.4, cores=2)
    words = [comparison(v) for v in (1.5, 1.0, 0.5)]
    assert words == ["more than", "within noise of", "fewer than"]
