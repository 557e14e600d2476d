"""The benchmarks run end to end and their correctness figures hold (no timing asserted)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from interaction.fanout import socketio_event
from interaction.loadgen import FrameCache, Tally, ViewerProtocol
from interaction.transport import websocket_frame
from tests.test_node import clean_env

TRIBUNE = str(Path(sys.executable).with_name("tribune"))


def bench(*args: str) -> dict[str, Any]:
    """`tribune bench … --json` as a newcomer runs it; its figures."""
    result = subprocess.run(
        [TRIBUNE, "bench", *args, "--json"], env=clean_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_the_load_generator_counts_gaps_duplicates_and_disorder() -> None:
    """Viewers sharing one frame decode it once and take it in one step; anything but the next
    events, in order, is counted event by event."""

    def frame(*seqs: int) -> bytes:
        batch = [{"seq": q, "type": "comment.published", "at": "", "data": {"id": 100 + q}} for q in seqs]
        return websocket_frame(socketio_event("events", batch))

    loop = asyncio.new_event_loop()
    tally, cache = Tally(), FrameCache()
    viewers = [ViewerProtocol("h", {}, tally, cache, i == 0, loop.create_future()) for i in range(2)]
    for viewer in viewers:
        viewer.upgraded, viewer.seq = True, 0
        viewer.data_received(frame(1, 2, 3))
    assert (tally.events, tally.lost, tally.duplicated, tally.out_of_order) == (6, 0, 0, 0)
    first, second = viewers
    first.data_received(frame(3, 4))  # 3 again
    assert (tally.events, tally.duplicated, first.seq) == (7, 1, 4)
    whole = frame(6, 7)
    first.data_received(whole[:5])  # split across reads: nothing yet
    assert tally.events == 7
    first.data_received(whole[5:] + frame(8))  # 5 is missing, then a frame in the same read
    assert (tally.events, tally.lost, tally.out_of_order, first.seq) == (10, 1, 1, 8)
    second.data_received(frame(4, 6, 5))  # gap-free as a set, not in order
    assert (tally.lost, tally.out_of_order, tally.duplicated, second.seq) == (2, 2, 2, 6)
    assert list(tally.arrived_ids) == [101, 102, 103, 104, 106, 107, 108]  # the sampled viewer's
    loop.close()


@pytest.mark.slow
def test_bench_comments_small_run() -> None:
    figures = bench("comments", "--clients", "60", "--rate", "20", "--duration", "2", "--churn", "5")
    ours, baseline = figures["tribune"], figures["baseline"]
    # Viewers came and went beside them (presence changing all along): nothing else changed.
    assert ours["churn"]["joined"] >= 5 and ours["churn"]["failed"] == 0
    for run in (ours, baseline):
        assert run["clients"] == run["connected"] == 60
        assert 35 <= run["published"] <= 42  # 20 a second for 2 seconds
        assert run["deliveries"] == 60 * run["published"]  # every viewer got every event …
        assert run["lost"] == run["duplicated"] == run["out_of_order"] == 0  # … once, in order
        assert run["latency_ms"]["p50"] is not None and run["server_cpu_s"] > 0
    assert figures["deliveries_per_cpu_s_vs_baseline"] > 0
    assert ours["node_us_per_frame"] > 0  # the node counted the frames its passes wrote
    # The loop's lag was watched through the 2 s window (a timer every 100 ms).
    assert ours["node_loop_lag_ms"]["p99_at_most"] is not None


@pytest.mark.slow
def test_bench_scoring_small_run() -> None:
    figures = bench("scoring", "--reps", "300", "--sessions", "10")
    assert figures["facts"]["attendances"] > 0 and figures["facts"]["comments"] > 0
    assert figures["same_rows_when_rescored"] and figures["points_rows"] > 0
    assert figures["session_report"]["rows"] == 300  # no participant lists: the whole roster is expected


@pytest.mark.slow
def test_bench_votes_small_run() -> None:
    figures = bench("votes", "--voters", "300", "--nodes", "2", "--rate", "300", "--refused")
    for run in (figures["tribune"], figures["baseline"]):
        assert run["voters"] == run["acked"] == run["in_db"] == 300  # every vote acknowledged and kept …
        assert run["duplicates"] == 0 and run["statuses"] == {"recorded": 300}  # … once
        assert run["ack_latency_ms"]["p99"] is not None and run["server_cpu_s"] > 0
    assert figures["tribune"]["vote_batch"]["commits"] < 300  # votes shared commits
    assert figures["votes_per_server_cpu_s_vs_baseline"] > 0
    # The same votes on a closed poll: every one answered, refused, and nothing written.
    refused = figures["refused"]
    assert refused["refusals"] == {"poll_closed": 300} and refused["acked"] == refused["in_db"] == 0
    assert set(figures["write_cpu_us_per_vote"]) >= {"tribune", "baseline"}


@pytest.mark.slow
@pytest.mark.usefixtures("loopback_only")
def test_bench_hls_small_run() -> None:
    figures = bench("hls", "--viewers", "20", "--nodes", "2", "--seconds", "8")
    assert figures["viewers"] == 20 and figures["nodes"] == 2 and figures["errors"] == 0
    # Every player fetched the segments that came out while it played (about one per 2 s).
    assert figures["segment_requests"] >= 20 * 2
    assert 0 <= figures["misses"] <= figures["segment_requests"]
    assert figures["bytes_per_s"] > 0 and figures["server_cpu_s"] > 0
    assert figures["ttfb_ms"]["p50"] is not None
    assert 0 <= figures["ttfb_ms"]["p50"] <= figures["ttfb_handled_ms"]["p50"]
    assert figures["live_latency_s"]["by_playlist_clock"]["hls"] is not None


def test_bench_whep_small_run(loopback_only: None) -> None:
    figures = bench("whep", "--viewers", "6", "--seconds", "4", "--no-baseline")["tribune"]
    assert figures["connected"] == 6 and figures["errors"] == []
    # Six viewers are nothing to a node: each got the frames the publisher sent, whole,
    # starting at a keyframe, and the three that decode decoded them.
    assert figures["frozen_viewers"] == 0 and figures["all_started_at_keyframe"]
    assert figures["frames_received"]["min"] >= 0.9 * figures["frames_sent"] > 0
    assert len(figures["decoded_sample"]) == 3 and min(figures["decoded_sample"]) > 0
    assert figures["server_cores"] > 0 and figures["load_generator_cores"] > 0


@pytest.mark.slow
def test_bench_all_describes_the_machine_and_runs_what_it_is_asked() -> None:
    figures = bench("all", "--only", "scoring")
    assert figures["machine"]["cpus"] >= 1 and figures["machine"]["python"].startswith("3.")
    assert list(figures["benchmarks"]) == ["scoring"]
    scoring = figures["benchmarks"]["scoring"]
    assert scoring["same_rows_when_rescored"] and scoring["session_report"]["rows"] == 2000
