"""The warm stage runner: one process that imports what the stages import, once, then forks a
child for each stage that `python -m flows <stage>` (flows/stage.py) asks it to run.

    python -m flows.runner SOCKET

`flows.local_server` (what `make run` wraps `dvc repro` in) starts one beside the Prefect
server and stops it afterwards; nothing else needs to. It listens on the Unix socket SOCKET
from the start and answers once its imports are done, so a stage that asks early waits
instead of importing everything itself.

A child is what `python -m flows.<stage>` would be, minus the imports: it takes the client's
arguments, directory, environment, signal dispositions and standard streams (passed over
the socket), runs the stage module as __main__ in a process group of its own, and exits
through the interpreter's normal exit (exit hooks, Prefect's and MLflow's flushes). The
runner reports its exit status to the client, sends its group SIGTERM when the client
disappears (killed, even with SIGKILL), and its children get SIGTERM when it dies (their
parent-death signal, set by flows.process.run_command).

Why forking is safe here: the runner never runs torch (no OpenMP thread pool exists yet, so
each child starts its own) and starts no Python thread (checked: it refuses to serve if an
import did). The native threads that imports start (OpenBLAS's pool, jemalloc's background
thread) are stopped and restarted around fork() by their own libraries.

A request is refused (and the client runs the stage itself) when it would not be the same
as a fresh process: another working directory, an environment that differs in anything but
DVC's per-stage variables and the shell's, or project code changed since it was imported.
"""

from __future__ import annotations

import gc
import importlib
import io
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from flows.stage import (
    RUNNER_ENV,
    _signal_group,
    receive_message,
    run_in_this_process,
    send_message,
)

# What the stages import (their modules, torch's compiler stack that Adam's first step
# imports, MLflow's database store): ~7 s a stage otherwise.
PRELOAD = (
    "flows.prepare",
    "flows.train",
    "flows.evaluate",
    "flows.report",
    "torch._dynamo",
    "mlflow.store.tracking.sqlalchemy_store",
)
# Run as __main__ by each child (as `python -m` does), so not kept under their own names.
STAGE_MODULES = ("flows.prepare", "flows.train", "flows.evaluate", "flows.report")
# Environment variables that may differ between the runner and a stage: DVC's per-stage
# ones (DVC_STAGE, DVC_ROOT, ...) and what a shell sets for the command it runs.
PER_COMMAND_ENV = frozenset({"PWD", "OLDPWD", "SHLVL", "_", RUNNER_ENV})
PER_COMMAND_PREFIXES = ("DVC_",)
STD_STREAMS = ("stdin", "stdout", "stderr")
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
# A stage sent SIGTERM (its client gone, the runner stopping) is killed this much later:
# less than flows.local_server waits for the runner itself, which then kills the runner.
STOP_SECONDS = 10


def preload() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    for name in STAGE_MODULES:
        package, _, attribute = name.rpartition(".")
        del sys.modules[name]
        delattr(sys.modules[package], attribute)
    # MLflow maps every installed module to its distribution at each model logged (~0.8 s,
    # scanning site-packages), once per process: here, once for all. Private, so optional.
    try:
        from mlflow.utils import requirements_utils

        requirements_utils._init_modules_to_packages_map()
    except (ImportError, AttributeError):
        pass
    gc.collect()
    gc.freeze()  # the children's collections then skip everything imported here


def project_files(root: Path) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every imported module of the project's packages under `root`."""
    packages = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    found = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file:
            continue
        try:
            relative = Path(file).resolve().relative_to(root)
        except ValueError:
            continue
        if relative.parts[0] in packages:
            stat = os.stat(file)
            found[relative.as_posix()] = (stat.st_mtime_ns, stat.st_size)
    return found


def _changed(files: dict[str, tuple[int, int]], root: Path) -> str | None:
    for relative, seen in files.items():
        try:
            stat = os.stat(root / relative)
        except OSError:
            return relative
        if (stat.st_mtime_ns, stat.st_size) != seen:
            return relative
    return None


def _per_command(key: str) -> bool:
    return key in PER_COMMAND_ENV or key.startswith(PER_COMMAND_PREFIXES)


class Runner:
    def __init__(self, listener: socket.socket, env_before_imports: dict[str, str]) -> None:
        self.listener = listener
        self.pid = os.getpid()
        self.root = Path.cwd().resolve()
        # A client's environment is compared with ours as it was before the imports, and
        # what they changed in it (torch sets TORCHINDUCTOR_CACHE_DIR) is changed in the
        # child's too, as the same imports in a fresh process would have.
        self.env = env_before_imports
        self.set_by_imports = {
            key: value for key, value in os.environ.items() if self.env.get(key) != value
        }
        self.unset_by_imports = set(self.env) - set(os.environ)
        self.files = project_files(self.root)
        self.children: dict[int, socket.socket | None] = {}  # pid -> its client's socket
        # pid -> when its group gets SIGKILL: a stage whose client is gone was sent SIGTERM,
        # which a stage already stopping (after Ctrl-C) ignores; as when it ran in DVC's
        # process group, it is killed STOP_SECONDS later.
        self.kill_at: dict[int, float] = {}
        self.selector = selectors.DefaultSelector()
        self.wake_read, self.wake_write = os.pipe()

    # --- the loop -------------------------------------------------------------------------

    def serve(self) -> None:
        os.set_blocking(self.wake_write, False)
        os.set_blocking(self.wake_read, False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_write)  # a child's exit wakes select()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wake_read, selectors.EVENT_READ)
        while True:
            for key, _ in self.selector.select(timeout=self.next_kill()):
                if key.fileobj is self.listener:
                    self.accept()
                elif key.fileobj == self.wake_read:
                    while _drain(self.wake_read):
                        pass
                else:
                    self.client_gone(key.fileobj)
            self.reap()
            self.kill_overdue()

    def accept(self) -> None:
        """Take one request: refuse it, or fork its stage. A request that goes wrong (its
        client gone, a malformed message, fork failing) is dropped; the runner goes on."""
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        fds: list[int] = []
        try:
            conn.settimeout(10)
            request, fds = receive_message(conn, max_fds=len(STD_STREAMS))
            if request is None or len(fds) != len(STD_STREAMS):
                raise ValueError("an incomplete request")
            reason = self.refusal(request)
            if reason is not None:
                _send_quietly(conn, {"refused": reason})
                raise ValueError(reason)
            if _peer_gone(conn):  # it gave up waiting (timeout, Ctrl-C): run nothing for it
                raise ValueError("the client left")
            self.fork_stage(conn, request, fds)
        except Exception:  # noqa: BLE001 - one bad request must not stop the others' runner
            conn.close()
        finally:
            # A forked stage leaves through here too (SystemExit), its copies already moved.
            if os.getpid() == self.pid:
                for fd in fds:
                    os.close(fd)

    def fork_stage(self, conn: socket.socket, request: dict, fds: list[int]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # A stop signal the client forwards as soon as it hears of the child must not find
        # the runner's handlers there: held until the child's own are in place.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            self.become_stage(conn, request, fds, mask)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        try:
            # As the child does: whichever comes first, the group exists before the client
            # hears of the child (and may signal it).
            os.setpgid(pid, pid)
        except OSError:
            pass
        self.children[pid] = conn
        if _send_quietly(conn, {"pid": pid}):
            self.selector.register(conn, selectors.EVENT_READ)
        else:
            self.client_gone(conn)

    def refusal(self, request: dict) -> str | None:
        cwd = Path(request["cwd"]).resolve()
        if cwd != self.root:
            return f"the stage runner runs in {self.root}, this command in {cwd}"
        env = request["env"]
        differing = sorted(
            key
            for key in set(env) | set(self.env)
            if not _per_command(key) and env.get(key) != self.env.get(key)
        )
        if differing:
            return (
                "the environment differs from the stage runner's in "
                + ", ".join(differing[:5])
                + (" ..." if len(differing) > 5 else "")
            )
        changed = _changed(self.files, self.root)
        if changed is not None:
            return f"{changed} changed since the stage runner imported it"
        return None

    def client_gone(self, conn) -> None:
        """The client closed its end (it was killed, or it ended): stop its stage, SIGTERM
        now and SIGKILL STOP_SECONDS later if it is still there."""
        if self._registered(conn):
            self.selector.unregister(conn)
        conn.close()
        for pid, client in self.children.items():
            if client is conn:
                self.children[pid] = None
                self.kill_at[pid] = time.monotonic() + STOP_SECONDS
                _signal_group(pid, signal.SIGTERM)

    def _registered(self, conn) -> bool:
        try:
            self.selector.get_key(conn)
        except KeyError:
            return False
        return True

    def next_kill(self) -> float | None:
        if not self.kill_at:
            return None
        return max(min(self.kill_at.values()) - time.monotonic(), 0)

    def kill_overdue(self) -> None:
        now = time.monotonic()
        for pid, deadline in list(self.kill_at.items()):
            if pid not in self.children:
                del self.kill_at[pid]
            elif now >= deadline:
                _signal_group(pid, signal.SIGKILL)
                del self.kill_at[pid]

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            self.kill_at.pop(pid, None)
            if conn is not None:
                if self._registered(conn):
                    self.selector.unregister(conn)
                _send_quietly(conn, {"status": status})
                conn.close()

    def stop_children(self) -> None:
        """The runner is stopping: SIGTERM to every stage's group, and SIGKILL to what is
        left after STOP_SECONDS (a stage already stopping ignores SIGTERM)."""
        deadline = time.monotonic() + STOP_SECONDS
        for pid in self.children:
            _signal_group(pid, signal.SIGTERM)
        while self.children and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                self.children.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in self.children:
            _signal_group(pid, signal.SIGKILL)

    # --- in the child ---------------------------------------------------------------------

    def become_stage(
        self, conn: socket.socket, request: dict, fds: list[int], mask: set[int]
    ) -> None:
        """Turn this forked child into the stage the request asks for; exits the process
        through the interpreter's normal exit, never returns."""
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a fresh Python's
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            for name in request.get("ignored_signals", []):
                signal.signal(signal.Signals[name], signal.SIG_IGN)
            try:
                os.setpgid(0, 0)
            except OSError:
                pass
            self.selector.close()
            for sock in [self.listener, conn, *filter(None, self.children.values())]:
                sock.close()
            os.close(self.wake_read)
            os.close(self.wake_write)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            _reopen_std_streams(unbuffered=bool(request.get("unbuffered")))
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            os.environ.update(self.set_by_imports)
            for key in self.unset_by_imports:
                os.environ.pop(key, None)
        except BaseException:  # noqa: BLE001 - the stage never started: only say why
            traceback.print_exc()
            os._exit(1)
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # what came meanwhile arrives
            code = run_in_this_process(request["module"], list(request["args"]))
        except SystemExit:
            raise
        except KeyboardInterrupt:  # Ctrl-C before the stage's own handling began
            print("interrupted (SIGINT): stopped", file=sys.stderr)
            raise SystemExit(128 + signal.SIGINT) from None
        except BaseException:  # noqa: BLE001 - any error ends the stage, as at Python's top level
            # Printed as Python's top level would; exits 1 by SystemExit, which the
            # runner's frames above let through (they only clean up in the runner).
            sys.excepthook(*sys.exc_info())
            raise SystemExit(1) from None
        raise SystemExit(code)


def _peer_gone(conn: socket.socket) -> bool:
    """Whether the client has closed its end (nothing more to read, at end of stream)."""
    timeout = conn.gettimeout()
    conn.setblocking(False)  # a socket with a timeout would wait for data first
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        conn.settimeout(timeout)


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def _send_quietly(conn: socket.socket, message: dict) -> bool:
    try:
        send_message(conn, message)
    except OSError:
        return False
    return True


def _reopen_std_streams(unbuffered: bool) -> None:
    """sys.stdin, sys.stdout and sys.stderr on the client's streams (now fds 0, 1 and 2), as
    Python would have opened them: stdout line-buffered on a terminal, stderr always,
    unbuffered with -u."""
    for fd, name in enumerate(STD_STREAMS):
        old = getattr(sys, name)
        raw = unbuffered and fd > 0
        mode = "rb" if fd == 0 else "wb"
        binary = open(fd, mode, buffering=0 if raw else -1, closefd=False)  # noqa: SIM115 - sys's
        stream = io.TextIOWrapper(
            binary,
            encoding=getattr(old, "encoding", None),
            errors=getattr(old, "errors", None),
            line_buffering=not raw and (fd == 2 or (fd == 1 and os.isatty(fd))),
            write_through=raw,
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m flows.runner SOCKET", file=sys.stderr)
        return 2
    owner = os.getpid()

    def stop(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a child before it set its own handlers: as it would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    path = argv[0]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    runner = None
    try:
        listener.bind(path)  # first: a stage that asks now waits for the imports
        listener.listen(64)
        env_before_imports = dict(os.environ)
        preload()
        if threading.active_count() != 1:
            names = ", ".join(t.name for t in threading.enumerate())
            print(f"flows.runner: not serving, imports started threads: {names}", file=sys.stderr)
            return 1
        runner = Runner(listener, env_before_imports)
        runner.serve()
    finally:
        if os.getpid() == owner:  # the children leave through here too: nothing to undo
            listener.close()
            if runner is not None:
                runner.stop_children()
            try:
                os.unlink(path)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
