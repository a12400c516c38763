"""Just enough HTTP/1.1 client for requests the soak walks away from: a socket it owns and closes
at the moment it chooses, and a reader of what came back."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time


class RawConnection:
    """An HTTP/1.1 connection on a socket the soak owns, so that closing it sends the FIN (or,
    with SO_LINGER 0, the RST) within the call. An asyncio transport (uvloop's too) closes its
    socket only on the loop's next turn: on the soak's busy loop that can be tens of milliseconds
    later, which the close latency would then count against the proxy."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, host: str, port: int) -> RawConnection:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def recv(self) -> bytes:
        return await self.loop.sock_recv(self.sock, 65536)

    async def recv_within(self, seconds: float) -> bytes | None:
        """What arrives within ``seconds``; None when nothing did."""
        try:
            async with asyncio.timeout(seconds):
                return await self.recv()
        except TimeoutError:
            return None

    async def recv_all(self) -> bytes:
        """Everything until the proxy closes (the request said ``Connection: close``)."""
        parts = []
        while data := await self.recv():
            parts.append(data)
        return b"".join(parts)

    def close(self, how: str = "fin") -> float:
        """Close now; returns ``time.monotonic()`` right before."""
        if self.sock.fileno() < 0:
            return time.monotonic()
        self.loop.remove_reader(self.sock.fileno())  # a cancelled recv may have left its watcher
        if how == "rst":
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t = time.monotonic()
        if how == "fin":  # a FIN first, even if unread data would make close() send a RST
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
        self.sock.close()
        return t


class Malformed(Exception):
    """The proxy's answer is not well-formed HTTP/1.1."""


class RawResponse:
    """The status and body-so-far of a raw HTTP/1.1 response."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.rest = raw.partition(b"\r\n\r\n")
        try:
            self.status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise Malformed(f"bad status line {head[:40]!r}") from None
        self.chunked = b"transfer-encoding: chunked" in head.lower()

    def body(self) -> bytes:
        return dechunk(self.rest) if self.chunked else self.rest


def dechunk(raw: bytes) -> bytes:
    """The body of an HTTP/1.1 chunked message (its complete chunks)."""
    out, i = [], 0
    while True:
        j = raw.find(b"\r\n", i)
        if j < 0:
            break
        try:
            size = int(raw[i:j].split(b";")[0], 16)
        except ValueError:
            raise Malformed(f"bad chunk size {raw[i:j][:20]!r}") from None
        if size == 0 or j + 2 + size > len(raw):
            break
        out.append(raw[j + 2:j + 2 + size])
        i = j + 4 + size
    return b"".join(out)
