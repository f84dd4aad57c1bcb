"""Processes that stop together: children that die with us, entry points that stop cleanly.

- `die_with_parent()`: the calling process gets SIGTERM when its parent dies, even when the
  parent is killed with SIGKILL (Linux `prctl(PR_SET_PDEATHSIG)`; elsewhere nothing).
- `start_child()`: a child in its own session (so its whole tree can be signalled as one
  process group) that dies with this process; `stop_group()` stops that tree.
- `run_command(main)`: what every `python -m flows.<stage>` runs under. SIGTERM (and SIGHUP)
  take the same path as Ctrl-C: KeyboardInterrupt in the main thread, so `finally:` blocks
  and context managers run (locks released, child servers stopped); then one line instead
  of a traceback, and exit status 128 + the signal (130 for SIGINT, 143 for SIGTERM), also
  when the signal came as Python was exiting. `raise_if_stopped()` lets a loop stop when
  Python lost that KeyboardInterrupt (raised inside a finalizer, it is only printed).
- `prefect_server()`: `prefect server start` on 127.0.0.1 as a child that dies with us;
  `prefect_server_for_this_process()` starts one only when no Prefect API is configured,
  instead of Prefect's temporary server, which is a plain child that outlives a killed parent.

The parent-death signal is sent when the *thread* that started the child exits: start
children from a thread that lives as long as they should (the main thread here).

Only the standard library is imported at module level (Prefect only inside the functions
that need it), so any entry point can import this first.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import NoReturn

PR_SET_PDEATHSIG = 1
_LINUX = sys.platform.startswith("linux")

# Run in the child between fork and the real command: set the parent-death signal, exit if
# the parent already died (then no signal would ever come), then exec the command (same
# PID, so the setting and the process group stay). A separate interpreter rather than
# Popen(preexec_fn=...), which is unsafe in a process with threads (Prefect, MLflow, torch).
_EXEC_WITH_PDEATHSIG = """\
import ctypes, os, sys
parent, sig, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
if ctypes.CDLL(None, use_errno=True).prctl(1, sig, 0, 0, 0) == 0 and os.getppid() != parent:
    os._exit(128 + sig)
try:
    os.execvp(argv[0], argv)
except OSError as error:
    print(f"cannot run {argv[0]}: {error}", file=sys.stderr)
    os._exit(127)
"""


def _prctl_pdeathsig(sig: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(sig: int = signal.SIGTERM, parent_pid: int | None = None) -> bool:
    """Have the kernel send `sig` to this process when its parent dies; return whether set.

    `parent_pid` is the parent we expect (default: the parent now). If it is already gone
    when the setting takes effect, `sig` is sent at once, as the kernel would have. Linux
    only; elsewhere nothing happens and False is returned.
    """
    if not _LINUX:
        return False
    expected = os.getppid() if parent_pid is None else parent_pid
    if not _prctl_pdeathsig(sig):
        return False
    if os.getppid() != expected:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)
    return True


def start_child(
    args: Sequence[str], *, death_signal: int = signal.SIGTERM, **popen_kwargs
) -> subprocess.Popen:
    """`subprocess.Popen(args, **popen_kwargs)` in a new session (its own process group, for
    `stop_group`), and on Linux with `death_signal` sent to it when this process dies.

    A command that is not found raises FileNotFoundError, as with Popen."""
    args = [str(a) for a in args]
    if popen_kwargs.get("shell") or popen_kwargs.get("executable"):
        raise ValueError("start_child takes a list of arguments, without shell or executable")
    popen_kwargs.setdefault("start_new_session", True)
    if not _LINUX:
        return subprocess.Popen(args, **popen_kwargs)
    env = popen_kwargs.get("env")
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    cwd = popen_kwargs.get("cwd")
    program = args[0]
    if os.sep in program and cwd is not None and not os.path.isabs(program):
        program = os.path.join(os.fspath(cwd), program)
    if shutil.which(program, path=path) is None:
        raise FileNotFoundError(2, "No such file or directory", args[0])
    wrapper = [
        sys.executable,
        "-I",
        "-c",
        _EXEC_WITH_PDEATHSIG,
        str(os.getpid()),
        str(int(death_signal)),
    ]
    return subprocess.Popen(wrapper + args, **popen_kwargs)


def wait_child(process: subprocess.Popen, poll: float = 0.5) -> int:
    """`process.wait()` that lets this process's signal handlers run while it waits.

    A plain `wait()` blocks in waitpid(); in a process with threads (Prefect, MLflow) the
    kernel may deliver SIGTERM or SIGINT to another thread, and then waitpid is not
    interrupted and the Python handler (KeyboardInterrupt, Prefect's TerminationSignal)
    only runs when the child has exited on its own. A wait with a timeout polls."""
    while True:
        try:
            return process.wait(timeout=poll)
        except subprocess.TimeoutExpired:
            pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(
    process: subprocess.Popen, timeout: float = 20, sig: int = signal.SIGTERM
) -> int | None:
    """Stop the process group led by `process` (started by `start_child`): send `sig`, wait up
    to `timeout` s for the leader and the rest of the group to exit, then SIGKILL what is
    left. Returns the leader's exit status (negative: the signal that ended it)."""
    pgid = process.pid
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    try:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            pass
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:  # also when a second interrupt cuts the wait short
        if _group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return process.wait()


def run_in_own_group(args: Sequence[str], *, stop_seconds: float = 20, **popen_kwargs) -> int:
    """Run `args` as a child in its own process group that dies with this process
    (`start_child`) and wait for it; return its exit status (negative: the signal that ended
    it). Interrupted meanwhile (Ctrl-C, SIGTERM, which Prefect raises as TerminationSignal,
    a cancelled flow run), the whole group gets SIGINT (DVC releases its lock, a stage or a
    rank gets KeyboardInterrupt), SIGKILL after `stop_seconds`; then the interruption goes
    on."""
    child = start_child(args, **popen_kwargs)
    try:
        return wait_child(child)
    except BaseException:
        stop_group(child, timeout=stop_seconds, sig=signal.SIGINT)
        raise


class _Signals:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt once; later ones are reported and
    ignored, so that they cannot interrupt the `finally:` blocks stopping children and
    releasing locks (make forwards its SIGTERM to its child; Ctrl-C gets pressed twice).

    Once `main` has returned they are only recorded: there is nothing left to interrupt,
    but the exit status must still say the command was stopped (see `exit_status`)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.stopping = False
        self.exiting = False
        self.status: int | None = None  # the status main returned, once it has

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup, `cmd &` keep theirs
                signal.signal(sig, self.handle)
        atexit.register(self.exit_status)

    def handle(self, signum: int, frame) -> None:
        self.received.append(signum)
        if self.exiting:
            return
        if not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt
        _say(f"{signal.Signals(signum).name} again: still stopping")

    def exit_status(self) -> None:
        """At exit: a signal that came after `main` returned 0 still makes the status 128 + N.

        Python's shutdown runs threads' exit hooks (Prefect drains its queues to the API
        there) after `sys.exit`; a KeyboardInterrupt raised in them is only printed
        ("Exception ignored in ...") and the command would exit 0. DVC, which ignores SIGINT
        while a stage runs and goes by its status, would then record the stage and start the
        next one, as if Ctrl-C had never been pressed."""
        if self.status != 0 or not self.received:
            return
        _say(f"interrupted ({signal.Signals(self.received[0]).name}): stopped")
        logging.shutdown()  # what the exit hooks not yet run would have flushed
        sys.stdout.flush()
        os._exit(128 + self.received[0])


_signals = _Signals()  # the process's: installed by run_command, empty in any other


def raise_if_stopped() -> None:
    """Raise KeyboardInterrupt if a signal has asked this command to stop, unless the clean-up
    after it is running (a `finally:`, `__exit__` or `except` on the interrupt's way up).

    For loops (a training's epochs, retries) to call between steps. The handler's
    KeyboardInterrupt is normally on its way up already, but Python swallows it when it is
    raised inside a finalizer or a weakref callback (printed as "Exception ignored in ..."),
    and the command would then go on working with every later signal ignored."""
    if _signals.received and not _signals.exiting and not _cleaning_up():
        raise KeyboardInterrupt


def _cleaning_up() -> bool:
    error = sys.exc_info()[1]  # what is being handled here, in a finally block too
    while error is not None:
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            return True
        if type(error).__name__ == "TerminationSignal":  # Prefect's, from SIGTERM
            return True
        error = error.__context__
    return False


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # the terminal is gone (SIGHUP), stderr closed
        pass


def _interrupted(sig: int, error: BaseException | None = None) -> NoReturn:
    line = f"interrupted ({signal.Signals(sig).name}): stopped"
    if error is not None:
        line += f" (while stopping: {type(error).__name__}: {error})"
    _say(line)
    sys.exit(128 + int(sig))


def run_command(main: Callable[[], int | None]) -> NoReturn:
    """Run `main()` as a command-line entry point and exit with its status:

        if __name__ == "__main__":
            run_command(main)

    The process dies with its parent (SIGTERM, see `die_with_parent`), unless started with
    SIGHUP ignored (`nohup`: asked to outlive its terminal and parent). Ctrl-C, SIGTERM and
    SIGHUP raise KeyboardInterrupt in the main thread, once: later signals are ignored while
    the clean-up runs. An interrupted command ends with one line on stderr,
    "interrupted (SIGTERM): stopped", and exit status 128 + the signal number (130, 143)."""
    nohup = signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    signals = _signals
    signals.install()
    try:
        if not nohup:
            die_with_parent(signal.SIGTERM)
        code = main()
    except BaseException as error:
        # During a flow run Prefect's engine turns SIGTERM into its TerminationSignal (and
        # then usually sends SIGTERM again, which becomes KeyboardInterrupt here).
        termination = type(error).__name__ == "TerminationSignal"
        interrupt = isinstance(error, KeyboardInterrupt) or termination
        if isinstance(error, (SystemExit, GeneratorExit)) or not (interrupt or signals.received):
            raise
        signals.stopping = True
        if signals.received:  # an error raised while stopping is named on the same line
            _interrupted(signals.received[0], None if interrupt else error)
        _interrupted(getattr(error, "signal", signal.SIGTERM) if termination else signal.SIGINT)
    signals.exiting = True  # before the check: a signal from now on is only recorded
    if signals.received and not code:  # main caught the interrupt itself, or Python lost it
        _interrupted(signals.received[0])
    signals.status = code or 0
    # The interpreter's exit ends with garbage collections over every object still alive:
    # torch's, Prefect's and MLflow's (millions), about 1 s, in each of the ~50 commands of
    # `make run`. Frozen objects are out of the collector's sight, not out of the exit: the
    # exit handlers still run (Prefect's and MLflow's flushes, logging's), and what refers
    # to nothing cyclic is still freed as the modules are cleared.
    gc.freeze()
    sys.exit(code)


# --- Prefect servers ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def prefect_server(timeout: float = 90, ephemeral: bool = False) -> Iterator[str]:
    """`prefect server start` on 127.0.0.1 and a free port, as a child in its own session that
    dies with this process; yield its API URL; stop it on exit. `ephemeral`: like Prefect's
    temporary server (no UI, only the services a temporary server runs), which starts faster.
    The database is the one in PREFECT_HOME, as for any Prefect server."""
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    if ephemeral:
        # As Prefect starts its temporary server: this process's settings (also those set
        # in code, e.g. with temporary_settings), then no UI and the temporary services.
        from prefect.settings import get_current_settings

        env.update(get_current_settings().to_environment_variables(exclude_unset=True))
        env.update({"PREFECT__SERVER_EPHEMERAL": "1", "PREFECT_SERVER_UI_ENABLED": "false"})
    env.pop("PREFECT_API_URL", None)
    # Its messages go to a file, not a pipe: nobody reads a pipe during a long run, and a
    # full pipe would block the server.
    with tempfile.TemporaryFile() as messages:
        server = start_child(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=messages,
        )
        try:
            deadline = time.monotonic() + timeout
            while not _healthy(api_url):
                if server.poll() is not None:
                    messages.seek(0)
                    raise RuntimeError(
                        "the Prefect server exited at start: "
                        + messages.read().decode(errors="replace")[-2000:]
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the Prefect server did not answer on {api_url} within {timeout:.0f} s"
                    )
                time.sleep(0.25)
            yield api_url
        finally:
            stop_group(server, timeout=30, sig=signal.SIGTERM)


def _configured_api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def _drain_prefect_workers() -> None:
    """Send the logs and events Prefect still queues to the server before it stops (as
    Prefect's own test harness does)."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
    except ImportError:
        return
    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=5)
        except Exception:  # noqa: BLE001 - best effort: what is not sent by now is lost anyway
            pass


@contextmanager
def use_prefect_api(api_url: str) -> Iterator[str]:
    """Point this process (Prefect's settings, also in threads) and its children
    (PREFECT_API_URL) at `api_url`; restore both on exit."""
    import prefect.context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        environ_set("PREFECT_API_URL", api_url),
        temporary_settings(updates={PREFECT_API_URL: api_url}),
    ):
        # Threads that Prefect started earlier read the process-global settings.
        global_context = getattr(prefect.context, "_temporary_global_settings_context", None)
        if global_context is None:
            yield api_url
        else:
            with global_context(prefect.context.get_settings_context()):
                yield api_url


@contextmanager
def environ_set(name: str, value: str) -> Iterator[None]:
    """os.environ[name] = value for the duration (this process and the children it starts),
    then as it was."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


# Set by flows.local_server for the command it runs: the URL of the Prefect server it started
# for that command alone (PREFECT_API_URL is the same then).
OWN_SERVER_ENV = "FLOWS_OWN_PREFECT_SERVER"


@contextmanager
def without_heartbeats() -> Iterator[None]:
    """No flow-run heartbeats for the duration. Prefect sends one every 180 s from a thread,
    for a server's automations to tell a crashed run, and at the run's end waits for that
    thread, which sleeps in steps of a second: up to a second at the end of every flow run,
    every stage (bench.flow_end). Used only with a server started for this run, which
    nothing watches and which ends with it (a PREFECT_FLOWS_HEARTBEAT_FREQUENCY of yours
    included)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@contextmanager
def prefect_server_for_this_process(timeout: float = 90) -> Iterator[str | None]:
    """With no Prefect API configured (PREFECT_API_URL, in the environment or in Prefect's
    settings), start a server for this process (`prefect_server(ephemeral=True)`) and point
    Prefect at it; yield its URL, or None when a server was configured and nothing started.

    Prefect would otherwise start its temporary server, a plain child that is stopped only at
    a normal interpreter exit: it survives a SIGKILL or an unhandled SIGTERM of its parent.
    This one dies with this process whatever ends it."""
    configured = _configured_api_url()
    if configured:
        # make run's own server (flows.local_server) has no heartbeats to watch either.
        own = configured == os.environ.get(OWN_SERVER_ENV)
        with without_heartbeats() if own else nullcontext():
            yield None
        return
    with (
        prefect_server(timeout=timeout, ephemeral=True) as api_url,
        use_prefect_api(api_url),
        without_heartbeats(),
        # Our children too (flows.pipeline's `dvc repro` stages) know it is the run's own.
        environ_set(OWN_SERVER_ENV, api_url),
    ):
        try:
            yield api_url
        finally:
            _drain_prefect_workers()
