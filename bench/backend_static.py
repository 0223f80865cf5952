"""A static HTTP/1.1 backend for the proxy benchmarks: every GET answers a fixed ~100-byte JSON.

The issue's calibration used a static nginx; nginx is not part of the project's machines, so this
is the cheapest honest stand-in we can ship. Two implementations, both real HTTP/1.1 servers with
keep-alive (pipelined requests included), `Connection: close` honoured, request bodies skipped:

- ``c``: a single-threaded epoll server (the C source below), compiled with the system's C
  compiler into a cache folder on first use. Per request it costs about what nginx's static
  handler costs, so it leaves the most of the machine's two cores to the proxy being measured.
- ``python``: uvloop + httptools protocols, used when no C compiler is found.

Each process binds the port with SO_REUSEPORT, so N processes share it (the kernel spreads the
connections). ``python bench/backend_static.py --port P [--impl c|python]`` runs one process;
`StaticBackend` starts N of them, waits until they answer, and stops them by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

BODY = (
    b'{"id":"0b5c7f3e-4a61-4e1f-9d2a-6c1e8f3b2a90","name":"static","status":"ok",'
    b'"items":[1,2,3],"n":42}'
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)
RESPONSE_CLOSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)

C_SOURCE = r"""
/* Static HTTP/1.1 responder: epoll, non-blocking, keep-alive, pipelining, SO_REUSEPORT. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 16384
#define OUT 65536
static const char BODY_[] = @BODY@;
static char resp[512], resp_close[512];
static int resp_len, resp_close_len;

typedef struct { int fd; int in_len; int out_len; int out_off; long skip; int closing;
                 char in[BUF]; char out[OUT]; } conn_t;

/* Value of header `name` (case-insensitive) within [h, end), or NULL. */
static const char *header(const char *h, const char *end, const char *name, int *vlen) {
    size_t n = strlen(name);
    const char *p = memchr(h, '\n', end - h);
    while (p && p + 1 < end) {
        const char *line = p + 1, *eol = memchr(line, '\n', end - line);
        if (!eol) break;
        if ((size_t)(eol - line) > n && strncasecmp(line, name, n) == 0 && line[n] == ':') {
            const char *v = line + n + 1;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ')) ve--;
            *vlen = (int)(ve - v);
            return v;
        }
        p = eol;
    }
    return NULL;
}

static void drop(int ep, conn_t *c) { epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); free(c); }

/* Write what is queued; 1 when all is out, 0 when the socket is full, -1 on error. */
static int flush_out(conn_t *c) {
    while (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        c->out_off += (int)w;
    }
    c->out_len = c->out_off = 0;
    return 1;
}

/* Answer every complete request in the input buffer; -1 to drop the connection. */
static int serve(conn_t *c) {
    int pos = 0;
    for (;;) {
        if (c->skip > 0) {
            long take = c->in_len - pos < c->skip ? c->in_len - pos : c->skip;
            pos += (int)take; c->skip -= take;
            if (c->skip > 0) break;
        }
        char *start = c->in + pos, *end = c->in + c->in_len;
        char *hend = memmem(start, end - start, "\r\n\r\n", 4);
        if (!hend) break;
        hend += 4;
        int vlen = 0;
        const char *v = header(start, hend, "content-length", &vlen);
        long body = v ? strtol(v, NULL, 10) : 0;
        if (header(start, hend, "transfer-encoding", &vlen)) return -1; /* not for a benchmark */
        v = header(start, hend, "connection", &vlen);
        int close_it = v && vlen == 5 && strncasecmp(v, "close", 5) == 0;
        if (!close_it) {
            const char *sp = memchr(start, '\r', hend - start);
            if (sp && sp - start >= 8 && memcmp(sp - 8, "HTTP/1.0", 8) == 0)
                close_it = !(v && vlen == 10 && strncasecmp(v, "keep-alive", 10) == 0);
        }
        const char *r = close_it ? resp_close : resp;
        int rl = close_it ? resp_close_len : resp_len;
        if (c->out_len + rl > OUT) return -1;
        memcpy(c->out + c->out_len, r, rl); c->out_len += rl;
        pos = (int)(hend - c->in);
        c->skip = body;
        if (close_it) { c->closing = 1; break; }
    }
    if (pos > 0) { memmove(c->in, c->in + pos, c->in_len - pos); c->in_len -= pos; }
    if (c->in_len == BUF) return -1; /* a header larger than the buffer */
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s PORT [HOST]\n", argv[0]); return 2; }
    signal(SIGPIPE, SIG_IGN);
    resp_len = snprintf(resp, sizeof resp, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\n\r\n%s", strlen(BODY_), BODY_);
    resp_close_len = snprintf(resp_close, sizeof resp_close, "HTTP/1.1 200 OK\r\n"
                              "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                              "Connection: close\r\n\r\n%s", strlen(BODY_), BODY_);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(ls, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET; a.sin_port = htons((unsigned short)atoi(argv[1]));
    inet_pton(AF_INET, argc > 2 ? argv[2] : "127.0.0.1", &a.sin_addr);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096)) { perror("bind/listen"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno == EINTR) continue;
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *nc = calloc(1, sizeof *nc);
                    if (!nc) { close(fd); continue; }
                    nc->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            if (evs[i].events & EPOLLOUT) {
                int f = flush_out(c);
                if (f < 0 || (f == 1 && c->closing)) { drop(ep, c); continue; }
                if (f == 1) {
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
                }
                continue;
            }
            int dead = 0;
            for (;;) {
                ssize_t r = read(c->fd, c->in + c->in_len, BUF - c->in_len);
                if (r > 0) {
                    c->in_len += (int)r;
                    if (serve(c) < 0) { dead = 1; break; }
                    if (c->closing || c->in_len < BUF) break;
                    continue;
                }
                if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) dead = 1;
                break;
            }
            if (dead) { drop(ep, c); continue; }
            int f = flush_out(c);
            if (f < 0 || (f == 1 && c->closing)) { drop(ep, c); continue; }
            if (f == 0) {
                struct epoll_event cev = {.events = EPOLLOUT | EPOLLRDHUP, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
            }
        }
    }
}
"""


# -- the Python implementation: uvloop + httptools ------------------------------------------------


class _StaticProtocol(asyncio.Protocol):
    __slots__ = ("_close", "_parser", "_transport")

    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses (and set TCP_NODELAY).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                self._transport.close()

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None or self._close:
            return
        if self._parser.should_keep_alive():
            transport.write(RESPONSE)
        else:
            self._close = True
            transport.write(RESPONSE_CLOSE)
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def serve_python(host: str, port: int) -> None:
    import uvloop

    async def run() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        server = await asyncio.get_running_loop().create_server(
            _StaticProtocol, sock=sock, backlog=4096
        )
        async with server:
            await server.serve_forever()

    uvloop.run(run())


# -- the C implementation: compiled once into a cache folder -------------------------------------


def c_compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def build_c_server() -> Path:
    """Compile C_SOURCE (cached by its digest) and return the binary's path."""
    compiler = c_compiler()
    if compiler is None:
        raise RuntimeError("no C compiler (cc or gcc) found")
    body = '"' + BODY.decode().replace("\\", "\\\\").replace('"', '\\"') + '"'
    source = C_SOURCE.replace("@BODY@", body)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"mosaic-bench-static-{os.getuid()}"
    binary = cache / f"static-{digest}"
    if binary.exists():
        return binary
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    src = cache / f"static-{digest}.c"
    src.write_text(source)
    partial = cache / f"static-{digest}.{os.getpid()}.tmp"
    subprocess.run(
        [compiler, "-O2", "-o", str(partial), str(src)], check=True, capture_output=True, text=True
    )
    partial.replace(binary)
    return binary


# -- managing N processes --------------------------------------------------------------------------


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        return data.startswith(b"HTTP/1.1 200") and data.endswith(BODY)
    except OSError:
        return False


class StaticBackend:
    """N backend processes on one port (SO_REUSEPORT); `stop()` ends them by pid."""

    def __init__(
        self, port: int, *, processes: int = 1, impl: str = "auto", host: str = "127.0.0.1"
    ) -> None:
        if impl == "auto":
            impl = "c" if c_compiler() else "python"
        if impl not in {"c", "python"}:
            raise ValueError(f"unknown backend implementation {impl!r}")
        self.host, self.port, self.processes, self.impl = host, port, processes, impl
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def describe(self) -> str:
        kind = "C epoll" if self.impl == "c" else "Python uvloop+httptools"
        plural = "process" if self.processes == 1 else "processes"
        return f"static {len(BODY)}-byte JSON, {kind}, {self.processes} {plural}"

    def start(self, timeout: float = 15.0) -> None:
        if self.impl == "c":
            command = [str(build_c_server()), str(self.port), self.host]
        else:
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--port",
                str(self.port),
                "--host",
                self.host,
                "--impl",
                "python",
            ]
        for _ in range(self.processes):
            self.procs.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                break
            if _answers(self.host, self.port):
                time.sleep(0.2)  # let the other processes finish binding
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the static backend ({self.impl}) did not start on port {self.port}")

    def stop(self) -> None:
        from mosaic_devstack.embedded import stop_process

        for proc in self.procs:
            stop_process(proc.pid, timeout=5)
            proc.wait(timeout=5)
        self.procs.clear()

    def __enter__(self) -> StaticBackend:
        self.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--impl", choices=["c", "python"], default="python")
    args = parser.parse_args()
    if args.impl == "c":
        os.execv(str(build_c_server()), ["static", str(args.port), args.host])  # noqa: S606
    serve_python(args.host, args.port)


if __name__ == "__main__":
    main()
