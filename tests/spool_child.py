"""A spool writer for the kill -9 test: appends at full speed from several threads and
prints ``A <seq> <id>`` once each record is durable and ``D <seq>`` just before marking one
done. Run as ``python -m tests.spool_child DIR THREADS``; it never stops by itself."""

from __future__ import annotations

import sys
import threading

from writebehind.spool import Spool, SpoolLog


def main() -> None:
    path, threads = sys.argv[1], int(sys.argv[2])
    log = SpoolLog.open(Spool(path, max_bytes=1 << 26, segment_bytes=1 << 16))
    out = sys.stdout
    lock = threading.Lock()
    print("ready", flush=True)

    def work(k: int) -> None:
        i = 0
        while True:
            ident = f"{k}-{i}"
            seq = log.append({"id": ident, "pad": "z" * (i % 50)})
            log.wait_durable(seq)
            with lock:
                out.write(f"A {seq} {ident}\n")
                if i % 7 == 3:
                    out.write(f"D {seq}\n")
                out.flush()
            if i % 7 == 3:
                log.done([seq])
            i += 1

    for k in range(threads):
        threading.Thread(target=work, args=(k,), daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
