"""What each runnable example must print (issue 18: an exit code of 0 alone proves little).

``EXPECTED[name]`` lists the lines an example's standard output must hold, as regular
expressions searched line by line (``re.MULTILINE``). A pattern may come with a check of its
match, for figures that depend on timing but have a hard bound (a budget the capacity must
keep, a sink's rate limit). Besides these, every ``Stats(...)`` an example prints must
satisfy the conservation identity and report nothing lost (``check_stats``).

Only what the example is there to show is pinned, and only what is deterministic: counts
that follow from the example's own arithmetic (no yield between the adds, so coalescing is
exact), outcomes, and rows read back; not durations.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["EXPECTED", "check_example_output", "check_stats"]

Check = Callable[[re.Match[str]], bool]
Expectation = str | tuple[str, Check]


def number(m: re.Match[str], group: int = 1) -> float:
    return float(m.group(group).replace(",", ""))


def at_most(bound: float, group: int = 1) -> Check:
    return lambda m: number(m, group) <= bound


def between(low: float, high: float, group: int = 1) -> Check:
    return lambda m: low <= number(m, group) <= high


def same(a: int, b: int) -> Check:
    return lambda m: number(m, a) == number(m, b)


STATS_TAIL = r"lost=0, closed=(True|False)"

EXPECTED: dict[str, list[Expectation]] = {
    "capacity_provisioned.py": [
        r"^refused at add\(\): cost 5000 is more than the capacity could ever grant in a "
        r"second \(2000\)",
        r"^orders now: capacity 2,000/s \(shared\)",
        # the two tables together, after the first second's burst credit: never above the
        # budget (5% for rows landing on a second's edge), and far from starved
        (r"^seconds 1 to \d+: ([\d,]+)/s against 2,000/s", between(1_000, 2_100)),
    ],
    "capacity_shared_redis.py": [
        r"^budget 'example-[0-9a-f]+': shared 1,000/s in 10 partitions of 100",
        r"^  t=[\d.]+ s  a: 1,100/s \(won, 10 partitions\)$",  # alone: all 10 + reserved
        r"^  t=[\d.]+ s  b:   600/s \(won, 5 partitions\)$",  # two: half each + reserved
        r"^  t=[\d.]+ s  b closed: its leases are deleted$",
        r"^  t=[\d.]+ s  a closed: its leases are deleted$",
    ],
    "custom_sink.py": [
        rf"^JsonLinesSink: Stats\(accepted=120, committed=120, .*retried=1, .*{STATS_TAIL}",
        r"^  events\.jsonl holds 120 lines$",
        r"^CallableSink: Stats\(accepted=1000, committed=1000, ",
        r"^  totals: \{'/page/0': 334, '/page/1': 333, '/page/2': 333\}$",
    ],
    "dead_letters.py": [
        r"^dead-lettered: 2$",
        r"^  #1 PermanentSinkError: \{'id': 'agent-2', 'status': None, 'v': 1\}",
        r"^  #2 PermanentSinkError: \{'id': 'agent-4', 'status': None, 'v': 1\}",
        r"^replay: committed=2 deleted=2 kept=0$",
        r"^left in the store: 0$",
        r"^rows in agents: 6$",
    ],
    "deploy_celery.py": [
        r"^200 of 200 tasks done; 200 rows, 200 distinct, from [12] pool processes; "
        r"the worker exited 0 ",
    ],
    "deploy_django.py": [
        r"^200 of 200 requests answered 200; 200 rows, 200 distinct; gunicorn exited 0 ",
    ],
    "deploy_fastapi.py": [
        r"^200 of 200 requests answered 200; 200 rows, 200 distinct; uvicorn exited 0 ",
    ],
    "deploy_gunicorn.py": [
        r"^200 of 200 requests answered 200; 200 rows, 200 distinct; gunicorn exited 0 ",
    ],
    "deploy_multiprocessing.py": [
        r"^200 jobs done; 200 rows, 200 distinct, from [12] workers$",
    ],
    "events.py": [
        r"^#1 committed 200 records \(size\) in ",
        r"^#\d+ a write of 1 failed: PermanentSinkError \(split\)$",
        r"^#\d+ dead-lettered 1 record\(s\): PermanentSinkError$(?:\n.*)*?"
        r"\n#\d+ dead-lettered 1 record\(s\): PermanentSinkError$",  # both poison records
        r"^#\d+ closed: lost=0$",  # the stream ends with Closed
        rf"^Stats\(accepted=1000, committed=998, coalesced=0, dead_lettered=2, .*{STATS_TAIL}",
    ],
    "instruments_and_retry_rules.py": [
        r"^write attempts by outcome: \{'retry': 2, 'committed': 3\}$",
        r"^slowest write: [\d.]+ ms$",
        r"^committed 250, retried 2, dead-lettered 0, lost 0$",
    ],
    "otel_tracing.py": [
        r"^  sink\.query \(child of writebehind\.write\)$",
        r"^writebehind\.write batcher=audit size=8 attempt=1 reason=size outcome=retry "
        r"error\.type=writebehind\.RetriableSinkError status=ERROR$",
        r"^writebehind\.write batcher=audit size=8 attempt=2 reason=size outcome=split ",
        r"^writebehind\.write batcher=audit size=1 attempt=1 reason=size "
        r"outcome=dead_lettered error\.type=writebehind\.PermanentSinkError status=ERROR$",
        r"^writebehind\.write batcher=audit size=8 attempt=1 reason=close outcome=committed "
        r"error\.type=- status=UNSET$",
        rf"^Stats\(accepted=16, committed=15, coalesced=0, dead_lettered=1, .*{STATS_TAIL}",
    ],
    "overflow_policies.py": [
        r"^block +[\d.]+ s  sink writes  10  refused   0\n +accepted 100  committed 100  "
        r"dropped   0  lost 0 ",
        r"^raise +[\d.]+ s  sink writes   2  refused  80\n +accepted  20  committed  20  "
        r"dropped   0  lost 0 ",
        r"^drop_newest +[\d.]+ s  sink writes   2  refused   0\n +accepted 100  committed  20"
        r"  dropped  80  lost 0  dropped_by_reason \{'drop_newest': 80, 'drop_oldest': 0, "
        r"'expired': 0\}$",
        r"^drop_oldest +[\d.]+ s  sink writes   2  refused   0\n +accepted 100  committed  20"
        r"  dropped  80  lost 0  dropped_by_reason \{'drop_newest': 0, 'drop_oldest': 80, "
        r"'expired': 0\}$",
        r"^direct +[\d.]+ s  sink writes  22  refused  60\n +accepted  40  committed  40  "
        r"dropped   0  lost 0 ",
        # block: the producer waited for the sink's 10 writes of 50 ms, one at a time
        (r"^block +([\d.]+) s ", lambda m: number(m) >= 0.45),
    ],
    "pause_and_json_columns.py": [
        r"^paused, 1 pending, 0\.\d s left$",
        (r"^flushed after ([\d.]+) s: 1 committed, 2 coalesced$", lambda m: number(m) >= 0.45),
        r"^events: Paused, Resumed, BatchCommitted$",
        r"""^row: \(3, 'up', '\{"rack": 3, "region": "eu"\}'\)$""",
    ],
    "postgres_heartbeats.py": [
        r"^table example_heartbeats_[0-9a-f]+$",
        rf"^Stats\(accepted=4000, .*dead_lettered=0, dropped=0, .*{STATS_TAIL}",
        r"^statements: \d+$",
        r"^rows: 200, newest updated_at: \d{4}-",
    ],
    "postgres_own_pool.py": [
        r"^table example_own_pool_[0-9a-f]+$",
        rf"^Stats\(accepted=1100, .*dead_lettered=0, dropped=0, .*{STATS_TAIL}",
    ],
    "postgres_pgbouncer.py": [
        r"^PostgresSink\(.*table=public\.example_pgbouncer_[0-9a-f]+, key=\('id',\)\)$",
        rf"^Stats\(accepted=500, .*dead_lettered=0, dropped=0, .*{STATS_TAIL}",
        r"^prepared statements left on the connection: 0$",
    ],
    "postgres_psycopg_copy.py": [
        r"^own connections: committed=2000 lost=0$",
        r"^your pool \(psycopg\): committed=2000 lost=0$",
        r"^rows=\(4000, 2\)$",
    ],
    "prometheus_metrics.py": [
        r'^writebehind_records_accepted_total\{batcher="heartbeats"\} 2000\.0$',
        r'^writebehind_records_committed_total\{batcher="heartbeats"\} 99\.0$',
        r'^writebehind_records_coalesced_total\{batcher="heartbeats"\} 1900\.0$',
        r'^writebehind_records_dead_lettered_total\{batcher="heartbeats"\} 1\.0$',
        r'^writebehind_records_lost_total\{batcher="heartbeats"\} 0\.0$',
        r'^writebehind_writes_retried_total\{batcher="heartbeats"\} 1\.0$',
        r'^writebehind_sink_state\{batcher="heartbeats",state="healthy"\} 1\.0$',
        r"^app_agents_known 100\.0$",
        rf"^Stats\(accepted=2000, committed=99, coalesced=1900, dead_lettered=1, .*{STATS_TAIL}",
    ],
    "redis_sink_newest_wins.py": [
        r"^a1 \{.*'v': '9', 'status': 'up at 9'",
        r"^a3 \{.*'v': '9', 'status': 'up at 9'",
        r"^last seen: \[\('a1', 9\.0\), \('a2', 9\.0\), \('a3', 9\.0\)\]$",
    ],
    "redis_stream_handoff.py": [
        r"^app-1: 100 heartbeats in the stream$",
        r"^flusher-a: killed after",
        r"^flusher-b: wrote 200 rows; StreamReport\(read=200, claimed=200, added=200, "
        r"acked=200, dead_lettered=0, left_pending=0\)$",
        r"^table: 200 agents, every one at its newest version: True$",
    ],
    "add_many.py": [
        r"^500 readings: 50 rows written, 450 superseded by a newer reading$",
        r"^refused: records\[1\]: key is None: .*no record of the group was taken$",
        rf"^Stats\(accepted=500, committed=50, coalesced=450, .*batches=1, .*{STATS_TAIL}",
        r"^rows: 50, newest seq: 499$",
    ],
    "bytes_budget.py": [
        r"^committed 200 in \d+ batches; held now 0 bytes$",
        r"^largest batch [\d,]+ bytes \(cap 256,000\): True$",
        r"^refused: max_batch_bytes: must be <= max_pending_bytes \(10\), got 20$",
    ],
    "from_model.py": [
        r"^table=users key=\('user_id',\) version=revision$",
        r"^the batcher reads: key='uid' version='rev'$",
        r"^an older revision, added last: STALE$",
        rf"^Stats\(accepted=301, committed=4, coalesced=297, .*{STATS_TAIL}.*\bstale=1\b",
        r"^rows: \[\(0, 'user 0', 's300', 300\), \(1, 'user 1', 's298', 298\), "
        r"\(2, 'user 2', 's299', 299\)\]$",
    ],
    "merge_counters.py": [
        r"^pending now: \{'page': '/', 'views': 3334, 'first_view': 0\}$",
        rf"^Stats\(accepted=10000, committed=3, coalesced=9997, .*{STATS_TAIL}",
        r"^totals: \{'/': 3434, '/docs': 3333, '/pricing': 3333\} in 1 statement\(s\)$",
    ],
    "ttl_and_peek.py": [
        r"^bob before the flush: online$",
        r"^ada, in flight: online$",
        r"^carol, never added: None$",
        r"^bob after 2.1 s: None$",
        r"^committed 1, expired 1$",
        r"^written: \['ada'\]$",
    ],
    "quickstart.py": [
        rf"^Stats\(accepted=1000, committed=50, coalesced=950, .*batches=1, .*{STATS_TAIL}",
        r"^statements: 1$",
        r"^rows: 50, newest seen_at: 999$",
    ],
    "spill_overflow.py": [
        r"^accepted 100, waiting 100, in the spool 80$",
        r"^committed 100, pending 0, lost 0$",
        r"^written once each, in order: True$",
        r"^outcomes: \{<Outcome\.COMMITTED: 'committed'>\}$",
    ],
    "spool_durable.py": [
        r"^acknowledged 500 records; spooled: 500$",
        r"^the producer was killed \(exit status -9\)$",
        r"^recovered from the spool: 500, committed: 500$",
        r"^add_nowait: durable before committed: True$",
        r"^rows in the table: 501$",
    ],
    "stale_rows.py": [
        r"^sqlite: job-1 running \(seq 2\): STALE$",
        r"^sqlite: job-2 queued \(seq 1\): COMMITTED$",
        r"^sqlite: job-3 queued \(seq 1\): COMMITTED$",
        r"^sqlite: committed=5 stale=1$",
        r"^sqlite rows: \[\('job-1', 'done', 3\), \('job-2', 'queued', 1\), "
        r"\('job-3', 'queued', 1\)\]$",
        r"^postgres: job-1 running \(seq 2\): STALE$",
        r"^postgres: job-2 queued \(seq 1\): COMMITTED$",
        r"^postgres: job-3 queued \(seq 1\): COMMITTED$",
        rf"^Stats\(accepted=5, committed=5, .*{STATS_TAIL}.*\bstale=1\b",
        r"^postgres rows: \[\('job-1', 'done', 3\), \('job-2', 'queued', 1\), "
        r"\('job-3', 'queued', 1\)\]$",
    ],
    "stats_asgi.py": [
        r"^http://127\.0\.0\.1:\d+/writebehind/stats: heartbeats-\d+ healthy, accepted 3$",
    ],
    "stats_wsgi.py": [
        r"^http://127\.0\.0\.1:\d+/writebehind/stats: heartbeats healthy, accepted 3, "
        r"committed 3; \d+ event\(s\) held$",
    ],
    "sync_threads.py": [
        *(rf"worker_{i}: last update COMMITTED" for i in range(4)),  # threads: may interleave
        rf"^Stats\(accepted=220, .*dead_lettered=0, dropped=0, .*{STATS_TAIL}",
        r"^jobs at 100 %: 20 of 20$",
    ],
    "throttling.py": [
        r"^  paused \(throttled\) for \d+ ms$",
        r"^  resumed after \d+ ms \(throttled\)$",
        # everything offered is committed, nothing lost, and never faster than the sink's
        # 1,000/s (plus its burst of 100 over about 3 s)
        (
            r"^offered ([\d,]+) records in [\d.]+ s; the sink takes 1,000/s\n"
            r"committed ([\d,]+) \([\d,]+/s\), lost 0$",
            same(1, 2),
        ),
        (r"^committed [\d,]+ \(([\d,]+)/s\), lost 0$", at_most(1_100)),
        (r"^throttled (\d+) times, concurrency now \d \(ceiling 4\)$", lambda m: number(m) >= 1),
    ],
    "top_endpoint.py": [
        r"^stats endpoint: http://127\.0\.0\.1:(\d+) \(try: writebehind top --url ",
        r"^writebehind top: heartbeats \(healthy\) at http://127\.0\.0\.1:\d+$",
        r"^  records    accepted [\d,]+  committed [\d,]+  coalesced [\d,]+  "
        r"dead-lettered \d+  lost 0$",
        r"^    #\d+ \d\d:\d\d:\d\d RecordsDeadLettered count=1 error=PermanentSinkError",
        (
            r"^served http://127\.0\.0\.1:\d+ while ([\d,]+) heartbeats were added; then closed "
            r"it\nStats\(accepted=([\d,]+), ",
            same(1, 2),
        ),
    ],
}

STATS_FIELDS = ("committed", "coalesced", "dead_lettered", "dropped", "pending", "in_flight")


def check_stats(out: str) -> int:
    """Every ``Stats(...)`` printed satisfies the conservation identity and lost nothing;
    returns how many there were."""
    found = 0
    for line in re.findall(r"Stats\((accepted=.*)", out):
        fields = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)\b", line)}
        assert fields["accepted"] == sum(fields[k] for k in STATS_FIELDS), line
        assert fields["lost"] == 0, line
        found += 1
    return found


def check_example_output(name: str, out: str) -> None:
    """Assert that ``out``, an example's standard output, holds what it should."""
    assert name in EXPECTED, f"examples/{name} has no expected output in tests/example_output.py"
    for expectation in EXPECTED[name]:
        pattern, check = expectation if isinstance(expectation, tuple) else (expectation, None)
        m = re.search(pattern, out, re.MULTILINE)
        assert m is not None, f"examples/{name}: no line matches {pattern!r} in:\n{out}"
        if check is not None:
            assert check(m), f"examples/{name}: {m.group(0)!r} is out of bounds"
    check_stats(out)
