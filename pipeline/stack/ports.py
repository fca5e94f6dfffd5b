"""Free TCP port selection on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Iterable

HOST = "127.0.0.1"


def is_port_free(port: int, host: str = HOST) -> bool:
    """True when nothing listens on ``host:port`` and it can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, exclude: Iterable[int] = (), host: str = HOST) -> list[int]:
    """Return ``count`` distinct ports that the OS reported free (bind to port 0).

    All sockets are held open until every port is chosen, so the ports are distinct;
    ports in ``exclude`` are never returned.
    """
    excluded = set(exclude)
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind((host, 0))
            port = s.getsockname()[1]
            if port not in excluded and port not in ports:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def free_port(host: str = HOST) -> int:
    """Return one port that is free on ``host`` at the time of the call."""
    return free_ports(1, host=host)[0]


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` succeeds (something listens)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
