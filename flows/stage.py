"""`python -m flows <stage> [ARGS...]`: run a stage (`prepare`, `train`, `evaluate`, `report`)
as `python -m flows.<stage> [ARGS...]` would, in a warm process when one is on offer.

Every DVC stage is a fresh Python process, and a fresh process spends ~7 s importing torch,
Prefect and MLflow (torch's compiler stack, which Adam's first step imports, and MLflow's
tracking store included) before its work starts: over a minute of every five in `make run`.
`make run` (flows/local_server.py) therefore also starts a stage runner (flows/runner.py), a
process that has imported all of that once, and puts its socket in FLOWS_STAGE_RUNNER. This
command, which imports only the standard library, asks it to fork a child that runs the stage
with this command's arguments, directory, environment and standard streams, then waits for
the child and exits with its status (128 + N when signal N ended it).

The child is the stage as a fresh `python -m` would run it (its module executed as __main__,
flows.process.run_command's signal handling and exit status), with these guarantees kept:
- Ctrl-C, SIGTERM and SIGHUP sent to this command go on to the child's process group, so
  the stage stops as it always has ("interrupted (SIGINT): stopped", 130);
- this command killed (even with SIGKILL) is seen by the runner, which sends the child
  SIGTERM, as the parent-death signal of a plain stage process would;
- the runner stopped, its children get SIGTERM (their parent-death signal).

The stage runs in this process instead (exactly `python -m flows.<stage>`) when there is no
runner, it does not answer, or it refuses: another directory, an environment that differs
in anything the runner's imports could have read (only DVC's per-stage variables and the
shell's may differ), or project code changed since the runner imported it. A refusal is
said in one line on stderr.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import socket
import struct
import sys
from typing import Any

STAGES = ("prepare", "train", "evaluate", "report")
RUNNER_ENV = "FLOWS_STAGE_RUNNER"  # the runner's socket, set by flows.local_server
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long to wait for the runner's answer: it accepts once its imports are done (~7 s).
ANSWER_SECONDS = 180

_HEADER = struct.Struct("!I")


def send_message(
    sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None
) -> None:
    """One JSON message, length-prefixed; `fds` travel with its first bytes."""
    payload = json.dumps(message).encode()
    header = _HEADER.pack(len(payload))
    if fds:
        socket.send_fds(sock, [header], list(fds))
    else:
        sock.sendall(header)
    sock.sendall(payload)


def receive_message(
    sock: socket.socket, max_fds: int = 0
) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message and the file descriptors that came with it; (None, []) at end of
    stream."""
    if max_fds:
        header, fds, _, _ = socket.recv_fds(sock, _HEADER.size, max_fds)
    else:
        header, fds = sock.recv(_HEADER.size), []
    try:
        header += _receive_exactly(sock, _HEADER.size - len(header)) if header else b""
        if len(header) < _HEADER.size:
            raise EOFError
        (size,) = _HEADER.unpack(header)
        payload = _receive_exactly(sock, size)
        if len(payload) < size:
            raise EOFError
        return json.loads(payload), fds
    except BaseException as error:  # the descriptors that came are ours to close
        for fd in fds:
            os.close(fd)
        if isinstance(error, EOFError):
            return None, []
        raise


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def exit_code(status: int) -> int:
    """A waitpid status as a shell reports it: the exit code, or 128 + N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def run_in_this_process(module: str, args: list[str]) -> int:
    """Exactly `python -m <module> ARGS`: the module runs as __main__ (a stage exits through
    flows.process.run_command, so this returns only for a module that does not exit)."""
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


class _Forwarder:
    """Our stop signals, for the child's process group: held until the runner has said which
    (it may be importing for seconds), then sent. A second one before that gives up."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.pending: list[int] = []
        self.previous = {
            sig: signal.getsignal(sig)
            for sig in FORWARDED
            if signal.getsignal(sig) is not signal.SIG_IGN
        }
        for sig in self.previous:
            signal.signal(sig, self.handle)

    def handle(self, signum: int, frame: object) -> None:
        if self.pid is not None:
            self.pending.append(signum)
            _signal_group(self.pid, signum)
        elif self.pending:
            raise KeyboardInterrupt
        else:
            self.pending.append(signum)

    def started(self, pid: int) -> None:
        self.pid = pid
        for signum in self.pending:
            _signal_group(pid, signum)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def run_in_runner(path: str, module: str, args: list[str]) -> int | str:
    """Have the runner at `path` run `module` with `args`; return its exit status, or why it
    did not (a string: then nothing ran; a stop signal before the runner answered makes it
    128 + the signal instead)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    forwarder = _Forwarder()
    try:
        sock.settimeout(ANSWER_SECONDS)
        try:
            sock.connect(path)
            ignored = [s.name for s in FORWARDED if signal.getsignal(s) is signal.SIG_IGN]
            request = {
                "module": module,
                "args": args,
                "cwd": os.getcwd(),
                "env": dict(os.environ),
                "ignored_signals": ignored,
                "unbuffered": bool(getattr(sys.stdout, "write_through", False)),  # python -u
            }
            send_message(sock, request, [0, 1, 2])
            answer, _ = receive_message(sock)
        except OSError as error:
            answer = {"refused": f"the stage runner at {path} did not answer ({error})"}
        if answer is None or "refused" in answer:
            if forwarder.pending:  # asked to stop, and nothing started: stop here
                name = signal.Signals(forwarder.pending[0]).name
                print(f"interrupted ({name}): stopped", file=sys.stderr)
                return 128 + forwarder.pending[0]
            if answer is None:
                return f"the stage runner at {path} closed the connection"
            return str(answer["refused"])
        forwarder.started(int(answer["pid"]))
        sock.settimeout(None)
        code = _wait_for_child(sock)
        # A stop signal that came as the stage was ending still says the command was
        # stopped (as flows.process.run_command's exit does): DVC must not go on.
        return 128 + forwarder.pending[0] if code == 0 and forwarder.pending else code
    finally:
        forwarder.restore()
        sock.close()


def _wait_for_child(sock: socket.socket) -> int:
    """Until the runner reports the child's status (our stop signals go on to it)."""
    answer, _ = receive_message(sock)
    if answer is None:  # the runner died; its children got SIGTERM (parent-death signal)
        print("flows: the stage runner stopped before the stage ended", file=sys.stderr)
        return 128 + signal.SIGTERM
    return exit_code(int(answer["status"]))


def _die_with_parent() -> None:
    # As flows.process.run_command does for a stage: DVC killed, we get SIGTERM, which
    # goes on to the stage. (Imported here: flows.process is stdlib-only too.)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:  # nohup: asked to outlive
        return
    from flows.process import die_with_parent

    die_with_parent(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m flows {{{','.join(STAGES)}}} [ARGS...]", file=sys.stderr)
        return 2
    module, args = f"flows.{argv[0]}", argv[1:]
    path = os.environ.get(RUNNER_ENV)
    if path:
        _die_with_parent()
        try:
            outcome = run_in_runner(path, module, args)
        except KeyboardInterrupt:  # Ctrl-C before the stage started (the runner importing)
            print("interrupted (SIGINT): stopped", file=sys.stderr)
            return 128 + signal.SIGINT
        if isinstance(outcome, int):
            return outcome
        print(f"flows: running {argv[0]} in this process: {outcome}", file=sys.stderr, flush=True)
    return run_in_this_process(module, args)
