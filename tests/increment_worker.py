"""A process of the two-process counter test (tests/test_increment.py).

``python tests/increment_worker.py OUT DSN TABLE DRIVER SEED ADDS START_AT``: wait until the
wall-clock time START_AT, then add ADDS records ``{"page": "p<n>", "views": 1}`` (the page
drawn from 50 with ``random.Random(SEED)``) through a sync ``Batcher`` with
``merge=wb.merge.sum_fields("views")`` into ``PostgresSink(..., increment=("views",))``,
in bursts (so batches of both processes interleave), and close. It writes to OUT (JSON) the
views it added per page, its ``stats()`` counts, the sink's statements, and the wall-clock
times its adding began and ended.
"""

from __future__ import annotations

import json
import random
import sys
import time

import writebehind as wb

PAGES = 50
BURST = 200


def main() -> None:
    out, dsn, table, driver, seed, adds, start_at = sys.argv[1:]
    rng = random.Random(int(seed))
    sink = wb.PostgresSink(dsn, table=table, key="page", driver=driver, increment=("views",))
    added: dict[str, int] = {}
    with wb.Batcher(
        sink, key="page", merge=wb.merge.sum_fields("views"), linger=0.005, max_batch=40,
        max_in_flight=2,
    ) as batcher:  # fmt: skip
        time.sleep(max(0.0, float(start_at) - time.time()))
        began = time.time()
        for i in range(int(adds)):
            page = f"p{rng.randrange(PAGES)}"
            added[page] = added.get(page, 0) + 1
            batcher.add({"page": page, "views": 1})
            if i % BURST == BURST - 1:
                time.sleep(0.002)  # let a batch or two go out between bursts
        ended = time.time()
    s = batcher.stats()
    report = {
        "added": added, "began": began, "ended": ended, "statements": sink.statements,
        "accepted": s.accepted, "committed": s.committed, "coalesced": s.coalesced,
        "dead_lettered": s.dead_lettered, "dropped": s.dropped, "lost": s.lost,
        "batches": s.batches,
    }  # fmt: skip
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
