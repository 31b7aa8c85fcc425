"""A small gevent service with greenprof's live dump.

Run it, then send it SIGUSR1 (``kill -USR1 <pid>``; it prints its pid):
every greenlet's name, state, stack and wait site go to stderr. Ctrl-C ends it.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402

import gevent  # noqa: E402
import gevent.queue  # noqa: E402

import greenprof  # noqa: E402

jobs: gevent.queue.Queue[float] = gevent.queue.Queue()


def worker() -> None:
    while True:
        delay = jobs.get()
        gevent.sleep(delay)


def serve(listener: socket.socket) -> None:
    while True:
        connection, _ = listener.accept()
        connection.close()


def slow_request() -> None:
    # Profiled: the dump can say how long it has waited.
    with greenprof.profile():
        gevent.sleep(3600)


def main() -> None:
    greenprof.install_signal_dump(signal.SIGUSR1)
    listener = socket.create_server(("127.0.0.1", 0))
    greenlets = [gevent.spawn(worker) for _ in range(3)]
    greenlets.append(gevent.spawn(serve, listener))
    greenlets.append(gevent.spawn(slow_request))
    for number, glet in enumerate(greenlets[:3]):
        glet.name = f"worker-{number}"
    greenlets[3].name = "server"
    greenlets[4].name = "slow-request"
    print(f"pid {os.getpid()}: kill -USR1 {os.getpid()} for a dump", flush=True)
    gevent.joinall(greenlets)


if __name__ == "__main__":
    main()
