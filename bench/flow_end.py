"""How long a flow run takes with Prefect's flow-run heartbeats (its default: one every 180 s,
from a thread) and without them, against one local Prefect server.

    python -m bench.flow_end                # median of 7, alternated
    python -m bench.flow_end --repeats 15

Prefect stops a flow run's heartbeat thread at the run's end and waits for it, and that thread
sleeps in steps of a second: every flow run, so every stage of `make run`, ends up to a second
later. The flows turn heartbeats off against a server this project started for the run
(flows.process.without_heartbeats). The table gives seconds per run of a flow that does
nothing, with and without, and the difference. Needs the pipeline's environment (Prefect).
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

from prefect import flow

from flows.process import (
    _drain_prefect_workers,
    prefect_server,
    use_prefect_api,
    without_heartbeats,
)


@flow(name="nothing")
def nothing() -> int:
    return 1


def seconds(heartbeats: bool) -> float:
    started = time.perf_counter()
    with nullcontext() if heartbeats else without_heartbeats():
        nothing()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    with prefect_server(ephemeral=True) as api_url, use_prefect_api(api_url):
        seconds(heartbeats=True)  # warm-up: the client, the server's first writes
        on, off = [], []
        for _ in range(args.repeats):  # alternated: a drift in speed touches both alike
            on.append(seconds(heartbeats=True))
            off.append(seconds(heartbeats=False))
        _drain_prefect_workers()  # the runs' last logs reach the server before it stops
    a, b = statistics.median(on), statistics.median(off)
    print(f"{'heartbeats':10} {'s per run':>9}")
    print(f"{'on':10} {a:9.2f}")
    print(f"{'off':10} {b:9.2f}")
    print(f"saved_per_run={a - b:.2f} s")


if __name__ == "__main__":
    main()
