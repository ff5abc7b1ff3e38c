"""Readiness probes for the test brokers, shared by the native scripts and tests/services.py.

Each probe speaks the broker's own protocol, so "answers" means a client can use it, not only
that a port is open. Standard library only: the scripts run before any virtualenv exists.
"""

from __future__ import annotations

import socket
import struct


def amqp_answers(host: str, port: int) -> bool:
    """The broker answers an AMQP 0-9-1 protocol header with a Connection.Start frame."""
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            frame = sock.recv(7)
    except OSError:
        return False
    return len(frame) == 7 and frame[0] == 1


def kafka_answers(host: str, port: int) -> bool:
    """The broker answers an ApiVersions request without error.

    The broker enables request processing only after it has caught up with the metadata log and
    been unfenced, so an answer here means clients can use it.
    """
    client = b"sealedbus-probe"
    body = struct.pack(">hhih", 18, 0, 1, len(client)) + client  # ApiVersions v0, corr 1
    try:
        with socket.create_connection((host, port), timeout=3) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            head = b""
            while len(head) < 10:
                chunk = sock.recv(10 - len(head))
                if not chunk:
                    return False
                head += chunk
    except OSError:
        return False
    _size, correlation, error = struct.unpack(">iih", head)
    return bool(correlation == 1 and error == 0)
