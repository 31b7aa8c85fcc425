"""HTTP/1.1 over real OS sockets, for greenprof's own threads: a server's
accept loop and a client's one request, even after
``gevent.monkey.patch_all()`` (whose sockets would need a hub in the
calling thread). Only what the exporters need: one request per connection.
"""

from __future__ import annotations

import _socket
import contextlib
import socket
import sys
import urllib.parse
from typing import Any, Final

__all__ = ["HttpAnswer", "post", "read_request", "real_socket", "respond"]

#: The most a request head (its line and headers) may be.
MAX_HEAD: Final = 65536


def _original(module: str, name: str) -> Any:
    """``module.name`` as it was before gevent patched it."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        with contextlib.suppress(Exception):
            return monkey.get_original(module, name)
    return getattr(sys.modules[module] if module in sys.modules else __import__(module), name)


def real_socket(family: int = socket.AF_INET) -> socket.socket:
    """A blocking socket of the OS, never gevent's."""
    cls = _original("socket", "socket")
    return cls(family, socket.SOCK_STREAM)  # type: ignore[no-any-return]


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The head of a message (up to its blank line) and what came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            msg = "HTTP head too long"
            raise OSError(msg)
        chunk = sock.recv(65536)
        if not chunk:
            msg = "connection closed before the end of the HTTP head"
            raise OSError(msg)
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def read_request(sock: socket.socket) -> tuple[str, str, dict[str, list[str]]]:
    """``(method, path, query)`` of the request on ``sock`` (its body is not read)."""
    head, _ = _read_head(sock)
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3:
        msg = f"not an HTTP request line: {line[:100]!r}"
        raise OSError(msg)
    target = urllib.parse.urlsplit(parts[1])
    return parts[0], target.path, urllib.parse.parse_qs(target.query)


def respond(sock: socket.socket, status: str, body: bytes, content_type: str) -> None:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(head.encode("latin-1") + body)


class HttpAnswer:
    """A response's status code and body."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


def post(
    url: str, body: bytes, *, headers: dict[str, str], timeout: float, ca_file: str | None = None
) -> HttpAnswer:
    """POST ``body`` to ``url`` (http, or https checked against the
    system's CA certificates or ``ca_file``'s) and read the whole answer;
    OSError on any failure."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = f"not an http or https URL: {url!r}"
        raise OSError(msg)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    # The C module's resolver: gevent's would need a hub in this thread.
    family, _, _, _, address = _socket.getaddrinfo(parts.hostname, port, 0, socket.SOCK_STREAM)[0]
    sock = real_socket(family)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        if parts.scheme == "https":
            import ssl

            context = _original("ssl", "SSLContext")(ssl.PROTOCOL_TLS_CLIENT)
            if ca_file is None:
                context.load_default_certs()
            else:
                context.load_verify_locations(ca_file)
            sock = context.wrap_socket(sock, server_hostname=parts.hostname)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        lines = [f"POST {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines += [f"{key}: {value}" for key, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        head, rest = _read_head(sock)
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(status_line) < 2 or not status_line[1].isdigit():
            msg = f"not an HTTP answer: {head[:100]!r}"
            raise OSError(msg)
        chunks = [rest]
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return HttpAnswer(int(status_line[1]), b"".join(chunks))
    finally:
        sock.close()
