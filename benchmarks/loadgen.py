"""Closed-loop HTTP load for bench_peers.py's web workload, in its own process.

``concurrency`` threads each hold one keep-alive connection and send the
next request as soon as the last reply is in. Requests started during the
warm-up are not counted. Prints one JSON object: requests, errors, rps,
p50_ms, p99_ms.

Run: ``python benchmarks/loadgen.py HOST PORT [--concurrency N] [--duration S]``.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import threading
import time

_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")


def _read_reply(sock: socket.socket, buffer: bytearray) -> bool:
    """Read one reply off ``sock``; True if it was a 200."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buffer += chunk
    head = bytes(buffer[:end])
    match = _LENGTH.search(head)
    total = end + 4 + (int(match.group(1)) if match else 0)
    while len(buffer) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buffer += chunk
    del buffer[:total]
    return head.startswith(b"HTTP/1.1 200")


def _client(
    address: tuple[str, int],
    first: int,
    step: int,
    measure_from: float,
    stop_at: float,
    latencies: list[float],
    errors: list[int],
) -> None:
    number = first
    buffer = bytearray()
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while (start := time.perf_counter()) < stop_at:
            sock.sendall(b"GET /r/%d HTTP/1.1\r\nHost: bench\r\n\r\n" % number)
            ok = _read_reply(sock, buffer)
            if start >= measure_from:
                latencies.append(time.perf_counter() - start)
                if not ok:
                    errors.append(number)
            number += step
    except OSError:
        errors.append(number)
    finally:
        sock.close()


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds not measured")
    options = parser.parse_args()
    measure_from = time.perf_counter() + options.warmup
    stop_at = measure_from + options.duration
    latencies: list[float] = []
    errors: list[int] = []
    threads = [
        threading.Thread(
            target=_client,
            args=(
                (options.host, options.port),
                index,
                options.concurrency,
                measure_from,
                stop_at,
                latencies,
                errors,
            ),
        )
        for index in range(options.concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ordered = sorted(latencies)
    print(
        json.dumps(
            {
                "requests": len(ordered),
                "errors": len(errors),
                "rps": len(ordered) / options.duration,
                "p50_ms": _percentile(ordered, 0.50) * 1000,
                "p99_ms": _percentile(ordered, 0.99) * 1000,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
