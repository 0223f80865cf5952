"""Gateway processes forked from an interpreter that has imported the gateway already.

`python -m mosaic_gateway serve` spends about 0.4 s of its 0.5 s start importing; the suite starts
about a hundred gateways. A fork server (this file run as a script, one per test process) imports
what `serve` imports, then waits; each gateway is a `fork()` of it that runs the same
`mosaic_gateway.cli.main(argv)` as `python -m mosaic_gateway` does, in a fresh process of its
own: the environment, working directory and standard output and error the test asked for, no
other file descriptor inherited, the default signal dispositions of a new interpreter, and a
normal interpreter exit (`sys.exit`, atexit handlers) at the end. Only the imports are shared,
and they are the same modules `serve` imports first thing anyway. What the gateway does lazily
(the tracing SDK, /docs) it still imports itself.

The server is the parent of the gateways it forks, so it reaps them and reports each exit code;
`ForkedProcess` gives the test the part of `subprocess.Popen` the tests use (pid, poll, wait,
send_signal, kill). If the test process goes away, the server kills what it started and exits.

The CLI's own process handling is still tested by starting `python -m mosaic_gateway` itself:
the tests of the process (test_lifecycle.py: signals, draining, workers, the supervisor; a
`GatewayFactory(exec_cli=True)`), exit codes and messages (test_config.py), a second gateway
refused its port (test_port_ownership.py). GATEWAY_TESTS_EXEC=1 starts every gateway so.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

# What `python -m mosaic_gateway serve` imports before it serves (cli.main imports the
# supervisor, which imports the worker and the runtime).
PRELOAD = ("mosaic_gateway.cli", "mosaic_gateway.lifecycle.supervisor")


class ForkServer:
    """The test process's end: starts the server, asks it for processes, learns their exits."""

    def __init__(self, env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair()
        self._sock = ours
        self._server = subprocess.Popen(
            [sys.executable, __file__, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._pids: list[int] = []
        self._exits: dict[int, int] = {}
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="forkserver", daemon=True)
        self._reader.start()

    def spawn(self, argv: list[str], log: Path, env: dict[str, str]) -> ForkedProcess:
        request = {"argv": argv, "log": str(log), "env": env, "cwd": os.getcwd()}
        with self._lock, self._changed:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
            while not self._pids:
                if self._closed:
                    raise RuntimeError("the fork server is gone")
                self._changed.wait(10)
            pid = self._pids.pop(0)
        return ForkedProcess(self, pid, ["mosaic-gateway", *argv])

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or self._closed, timeout)
            return self._exits.get(pid)

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                with self._changed:
                    self._closed = True
                    self._changed.notify_all()
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            with self._changed:
                for line in lines:
                    message = json.loads(line)
                    if "pid" in message:
                        self._pids.append(message["pid"])
                    else:
                        self._exits[message["exited"]] = message["code"]
                self._changed.notify_all()

    def close(self) -> None:
        """The server kills what is still running (the tests stop theirs before) and exits."""
        # shutdown, not only close: the reader thread is in recv() on this socket, which would
        # keep it open (and the server waiting) after a mere close.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        try:
            self._server.wait(10)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()
        self._reader.join(5)


class ForkedProcess:
    """A forked gateway, as much of `subprocess.Popen` as the tests use."""

    def __init__(self, server: ForkServer, pid: int, args: list[str]) -> None:
        self._server = server
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.exit_code(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._server.exit_code(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


# --- the server (this file run as a script) ---------------------------------------------------


def _serve(sock: socket.socket) -> dict[str, Any] | None:
    """Fork a child per request; returns the request in the child, None in the server at EOF."""
    children: set[int] = set()
    buffer = b""
    while True:
        readable, _, _ = select.select([sock], [], [], 0.02)
        if readable:
            data = sock.recv(65536)
            if not data:
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                return None
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    sock.close()
                    return request  # type: ignore[no-any-return]
                children.add(pid)
                sock.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                sock.sendall(json.dumps({"exited": pid, "code": code}).encode() + b"\n")


def _become(request: dict[str, Any]) -> None:
    """Turn this fresh child into the process `python -m mosaic_gateway ARGV` would be."""
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    for name in os.listdir("/proc/self/fd"):  # as Popen's close_fds
        if int(name) > 2:
            with contextlib.suppress(OSError):
                os.close(int(name))
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    import mosaic_gateway

    sys.argv = [str(Path(mosaic_gateway.__file__).parent / "__main__.py"), *request["argv"]]
    sys.path[0] = os.getcwd()  # as with -m (not this script's folder)


def main() -> None:
    for name in PRELOAD:
        __import__(name)
    sock = socket.socket(fileno=int(sys.argv[1]))
    request = _serve(sock)
    if request is None:
        return
    _become(request)
    from mosaic_gateway.cli import main as gateway_main

    sys.exit(gateway_main(request["argv"]))


if __name__ == "__main__":
    main()
