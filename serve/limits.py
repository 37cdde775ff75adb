"""Connection hygiene of the HTTP server: a connection limit, header and body read timeouts, keep-alive.

uvicorn's h11 server has a keep-alive timeout and a header size limit, but no limit on connections
and no read timeouts: idle clients hold a file descriptor each until the process runs out ("Too many
open files", and /healthz with it), and a client that trickles its headers or body is never closed.
`GuardedH11Protocol` adds, per server (`ConnectionGuard`):

- at most `max_connections` open connections. When one more arrives, a connection without a request
  in progress is closed to make room: first the one that has waited longest without ever completing
  a request (an idle flood is made of these), then the keep-alive client idle the longest since its
  last answer; with none to close, the newcomer gets a 503 and is closed. Either way the server keeps
  answering the requests it has, and clients it has served (a load balancer's /healthz) keep their
  connections through an idle flood.
- `header_timeout_s`: the request line and headers must arrive within this time of the connection
  (or of the first byte of a keep-alive request), like nginx's client_header_timeout.
- `body_timeout_s`: at most this long between two reads of a request body, like nginx's
  client_body_timeout; the request then ends as a client disconnect (499).
A timed-out connection that had sent part of a request gets a 408; an idle one is closed quietly.
- a lingering close, like nginx's lingering_close: an answer sent before the request body was read (a 413,
  a 401, a 422 at the first bad key) ends with the write side shut and the rest of the body read and
  dropped for up to LINGER_S, then the close. Closing a socket with unread data sends a TCP reset, and a
  client that receives it before reading the answer loses the answer.

`max_connections` is also kept under the process's file-descriptor limit (`fit_to_fd_limit`): asyncio
accepts up to `BACKLOG` connections per event-loop turn before any of them is seen here, and closes one
a turn after it is told to, so the limit leaves room for a few such bursts besides `FD_RESERVE`.
`GuardedServer` keeps that burst small while the kernel still queues LISTEN_QUEUE connections (asyncio
uses one number for both), so a flood of connections waits in the kernel instead of being dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from serve.metrics import Metrics

log = logging.getLogger("serve")

FD_RESERVE = 128
"""File descriptors kept free for everything but client sockets (model files, spooled uploads, pipes)."""
BACKLOG = 64
"""The most connections asyncio accepts in one event-loop turn (it is also the listen backlog asyncio sets)."""
LISTEN_QUEUE = 2048
"""Connections the kernel queues for accept() (uvicorn's default backlog; nginx's: 511)."""
BURSTS = 3
"""Accept bursts that can be open before the guard has closed what it refused (accept, see, close: 3 turns)."""


def fit_to_fd_limit(max_connections: int, reserve: int = FD_RESERVE + BURSTS * BACKLOG) -> int:
    """Raise the soft RLIMIT_NOFILE towards max_connections + reserve (up to the hard limit); the usable limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + reserve
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if raised > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    usable = max_connections if soft == resource.RLIM_INFINITY else min(max_connections, soft - reserve)
    if usable < max_connections:
        log.warning("max_connections lowered from %d to %d: the file-descriptor limit is %d (ulimit -n)",
                    max_connections, max(usable, 1), soft)
    return max(usable, 1)


def _canned(status: int, reason: str, kind: str, message: str, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 error answer in the gateway's JSON error format, closing the connection."""
    body = json.dumps({"error": {"status": status, "kind": kind, "message": message}}).encode()
    retry = f"retry-after: {retry_after}\r\n" if retry_after is not None else ""
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{retry}\r\n")
    return head.encode() + body


LINGER_S = 2.0
"""How long a connection answered before its request body ended keeps reading (and dropping) that body."""


class LingeringTransport:
    """The transport uvicorn's protocol and its request cycles see: `close` while the client is still sending
    a request body shuts the write side (after what is buffered) and leaves the socket reading, so the answer
    reaches the client before the close (GuardedH11Protocol drops what arrives meanwhile)."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedH11Protocol) -> None:
        self._transport, self._protocol = transport, protocol
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        transport = self._transport
        if self.lingering or transport.is_closing():
            return
        if self._protocol.conn.their_state is not h11.SEND_BODY or not transport.can_write_eof():
            transport.close()
            return
        self.lingering = True
        transport.write_eof()
        transport.resume_reading()
        self._protocol.loop.call_later(LINGER_S, transport.close)


class ConnectionGuard:
    """What the connections of one server share: the limits, who could be closed to make room, metrics."""

    def __init__(self, max_connections: int, header_timeout_s: float, body_timeout_s: float,
                 metrics: Metrics | None = None) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.metrics = metrics
        # No request in progress, oldest first: connections never served, and keep-alive clients served before.
        self.unserved: dict[GuardedH11Protocol, None] = {}
        self.served: dict[GuardedH11Protocol, None] = {}

    def closed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connections_closed.labels(reason).inc()

    def count(self, open_connections: int) -> None:
        if self.metrics is not None:
            self.metrics.connections.set(open_connections)

    def make_room(self) -> bool:
        """Close the longest-waiting connection that was never served, else the longest-idle served one;
        False if every connection has a request in progress."""
        for waiting in (self.unserved, self.served):
            while waiting:
                oldest = next(iter(waiting))
                del waiting[oldest]
                if not oldest.transport.is_closing():
                    oldest.transport.close()
                    self.closed("evicted")
                    return True
        return False

    def wait(self, connection: GuardedH11Protocol, served: bool) -> None:
        """`connection` has no request in progress (again, after an answer when `served`)."""
        if served:
            self.unserved.pop(connection, None)
            self.served.setdefault(connection, None)
        else:
            self.unserved.setdefault(connection, None)

    def busy(self, connection: GuardedH11Protocol) -> None:
        """`connection` has a request in progress, or is gone: it is not to be closed to make room."""
        self.unserved.pop(connection, None)
        self.served.pop(connection, None)

    def protocol(self) -> type[GuardedH11Protocol]:
        """The protocol class to give uvicorn (`http=`), bound to this guard."""
        return type("GuardedH11", (GuardedH11Protocol,), {"guard": self})


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits of its `guard` (see the module docstring)."""

    guard: ConnectionGuard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._reading = ""  # "headers" or "body" while a read timeout runs
        self._partial = False  # bytes of the current request have arrived

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = LingeringTransport(transport, self)  # type: ignore[assignment]
        guard = self.guard
        if len(self.connections) > guard.max_connections and not guard.make_room():
            transport.write(_canned(503, "Service Unavailable", "too_many_connections",
                                    f"the gateway holds its limit of {guard.max_connections} connections; "
                                    "retry later", retry_after=1))
            transport.close()
            guard.closed("refused")
            return
        guard.wait(self, served=False)
        guard.count(len(self.connections))
        self._start("headers", guard.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.busy(self)
        self._stop()
        super().connection_lost(exc)
        self.guard.count(len(self.connections))

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:  # the rest of a body already answered: dropped
            return
        self._partial = True
        if self._reading == "body":
            self._start("body", self.guard.body_timeout_s)  # per read, not for the whole body
        elif not self._reading and self.conn.their_state is h11.IDLE:
            self._start("headers", self.guard.header_timeout_s)  # the next keep-alive request begins
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._partial = False
            self._follow()

    def _follow(self) -> None:
        """Track the client's side of h11's state machine: which timeout applies, and whether it may be closed."""
        state = self.conn.their_state
        if state is h11.IDLE:
            if self.cycle is None or self.cycle.response_complete:
                self.guard.wait(self, served=self.cycle is not None)
            return
        self.guard.busy(self)  # a request is in progress
        if state is h11.SEND_BODY:
            if self._reading != "body":
                self._start("body", self.guard.body_timeout_s)
        else:
            self._stop()

    def _start(self, reading: str, timeout_s: float) -> None:
        self._stop()
        self._reading = reading
        self._timer = self.loop.call_later(timeout_s, self._expired)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._reading = ""

    def _expired(self) -> None:
        reading, self._timer = self._reading, None
        self._reading = ""
        if self.transport.is_closing():
            return
        if self._partial and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # no answer begun
            self.transport.write(_canned(408, "Request Timeout", "request_timeout",
                                         f"the request {reading} did not arrive in time"))
        self.transport.close()
        self.guard.closed(f"{reading}_timeout")


class GuardedServer(uvicorn.Server):
    """uvicorn's server, its listening sockets' kernel queue deepened to LISTEN_QUEUE after asyncio set BACKLOG."""

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                with sock.dup() as listening:  # the same socket: listen() again only resizes its queue
                    listening.listen(LISTEN_QUEUE)
