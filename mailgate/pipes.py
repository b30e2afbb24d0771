"""Frames on the pipes between the SMTP process and its pool processes.

A pool process speaks :class:`multiprocessing.connection.Connection` frames (a length,
then the bytes). This module reads and writes the same frames faster where a mail's size
makes it count: in a pool process, a big frame is read into one object of its size; in the
SMTP process, the event loop itself reads and writes them (:class:`Channel`), a big frame
a slice at a time. What the frames say is :mod:`mailgate.workers`' business.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import struct
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

from mailgate.errors import StoreUnavailable

Frame = bytes | memoryview
_LARGE_FRAME = 1 << 20  # frames this long are collected in pieces and joined once
_HEADER = struct.Struct("!i")  # multiprocessing.Connection's frame: a length, then the bytes
_LONG = struct.Struct("!Q")  # after a length of -1: frames of 2 GiB and more
_SLICE = 1 << 16  # bytes handed to a pipe's transport at a time, for frames longer than this


class Channel(asyncio.Protocol):
    """The SMTP process's end of a pool process's pipe, read and written by the event loop.

    The pool processes speak :class:`multiprocessing.connection.Connection` frames. Here
    the loop reads and writes them itself: with a thread per direction, every mail waited
    for the interpreter lock at each hand-over between a thread and the loop.
    """

    def __init__(self, on_frame: Callable[[Frame], None], on_lost: Callable[[], None]) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._outgoing: collections.deque[memoryview] = collections.deque()  # not yet written
        self._paused = False  # the transport holds enough unwritten bytes
        self._buffer = bytearray()
        self._pieces: list[bytes] | None = None  # a large frame, as it arrives
        self._missing = 0  # bytes of that frame still to come (negative: read beyond it)
        self.transport: asyncio.WriteTransport | None = None
        self.gone = threading.Event()  # the process's end is closed and all it sent was read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._pieces is not None:
            self._pieces.append(data)
            self._missing -= len(data)
            if self._missing > 0:
                return
            # A large frame (a big mail, parsed) is joined once, not grown and sliced.
            whole = b"".join(self._pieces)
            self._pieces = None
            size = len(whole) + self._missing
            self._on_frame(memoryview(whole)[:size])
            data = whole[size:]
            if not data:
                return
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer)
            start = _HEADER.size
            if size == -1:
                if len(buffer) < start + _LONG.size:
                    return
                (size,) = _LONG.unpack_from(buffer, start)
                start += _LONG.size
            if len(buffer) < start + size:
                if size >= _LARGE_FRAME:
                    self._pieces = [bytes(buffer[start:])]
                    self._missing = size - len(self._pieces[0])
                    buffer.clear()
                return
            with memoryview(buffer) as view:
                frame = bytes(view[start : start + size])
            del buffer[: start + size]
            self._on_frame(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self._outgoing.clear()
        self.gone.set()
        self._on_lost()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()

    def send(self, payload: Frame) -> None:
        """Queue one frame; the loop writes it as the pipe takes it, never blocking.

        The transport copies whatever the pipe does not take at once. A big mail is
        therefore handed to it a slice at a time, as the process at the other end reads,
        and never copied whole (nor joined to its header).
        """
        if self.transport is None or self.transport.is_closing():
            raise StoreUnavailable("the ingest process is gone")
        size = len(payload)
        long = size > 0x7FFFFFFF
        header = _HEADER.pack(-1) + _LONG.pack(size) if long else _HEADER.pack(size)
        if size <= _SLICE and not self._outgoing:
            self.transport.write(header + payload)
            return
        self._outgoing.append(memoryview(header))
        self._outgoing.append(memoryview(payload).cast("B"))
        self._pump()

    def _pump(self) -> None:
        """Hand queued bytes to the transport until it has enough in hand."""
        outgoing = self._outgoing
        while outgoing and not self._paused and self.transport is not None:
            if self.transport.is_closing():
                outgoing.clear()
                return
            view = outgoing[0]
            if len(view) > _SLICE:
                outgoing[0] = view[_SLICE:]
                view = view[:_SLICE]
            else:
                outgoing.popleft()
            self.transport.write(view)  # may call pause_writing

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def recv_frame(conn: Connection) -> bytes:
    """The next frame's bytes, read into one object of its exact size.

    :meth:`Connection.recv_bytes` collects a frame in a growing buffer and copies it out:
    two to three times a big mail at once. The pipe is a socket pair, so one receive that
    waits for all the bytes fills the result directly.
    """
    sock: socket.socket | None = getattr(conn, "mailgate_socket", None)
    if sock is None:  # made once per pipe, and gone with it
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        conn.mailgate_socket = sock  # type: ignore[attr-defined]
    (size,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    if size == -1:
        (size,) = _LONG.unpack(_recv_exactly(sock, _LONG.size))
    return _recv_exactly(sock, size)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = sock.recv(size, socket.MSG_WAITALL) if size else b""
    if len(data) == size:
        return data
    pieces = [data]  # a signal cut the wait short: the rest, and one copy to join it
    missing = size - len(data)
    while missing:
        piece = sock.recv(missing, socket.MSG_WAITALL)
        if not piece:
            raise EOFError("the SMTP process closed the pipe within a frame")
        pieces.append(piece)
        missing -= len(piece)
    return b"".join(pieces)
