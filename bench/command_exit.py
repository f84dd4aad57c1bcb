"""How long a pipeline command takes to exit once its work is done, with and without the
collector freeze that flows.process.run_command does before exiting.

    python -m bench.command_exit            # the modules of the prepare, train and evaluate stages
    python -m bench.command_exit --repeats 5

Each of `make run`'s ~50 stages is a fresh process that imports torch, Prefect and MLflow;
at exit the interpreter's last garbage collections walk all of their objects. For each
stage's module the table gives the seconds from the last statement to the end of the
process (median of the repeats), plain and after gc.freeze(), and their ratio. Needs the
pipeline's environment (the modules import Prefect and MLflow).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

MODULES = ("flows.prepare", "flows.train", "flows.evaluate")
# The child prints the time just before it exits; the parent reads its own clock at the end.
CHILD = "import {module}, time{freeze}; print(time.time(), flush=True)"


def exit_seconds(module: str, freeze: bool) -> float:
    code = CHILD.format(module=module, freeze="; import gc; gc.freeze()" if freeze else "")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ended = time.time()
    return ended - float(done.stdout.split()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modules", default=",".join(MODULES))
    args = parser.parse_args(argv)
    print(f"{'module':16} {'plain s':>8} {'frozen s':>9} {'ratio':>6}")
    for module in args.modules.split(","):
        # Alternated, so that a drift in the machine's speed touches both alike.
        plain, frozen = [], []
        for _ in range(args.repeats):
            plain.append(exit_seconds(module, freeze=False))
            frozen.append(exit_seconds(module, freeze=True))
        p, f = statistics.median(plain), statistics.median(frozen)
        print(f"{module:16} {p:8.2f} {f:9.2f} {f / p:5.2f}×")


if __name__ == "__main__":
    main()
