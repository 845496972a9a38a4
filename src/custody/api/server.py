"""Running the API and portal: one Uvicorn process, or several that share the port.

With several workers each process binds its own socket with SO_REUSEPORT, so the kernel
spreads connections across them. (One shared listening socket, as `uvicorn --workers` uses,
lets whichever process is awake accept most keep-alive connections: under load one worker
did nearly all the work while the other idled.) A worker that dies is started again.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import time

import uvicorn

APP = "custody.api.app:app_from_env"


def serve(host: str, port: int, workers: int) -> None:
    if workers <= 1:
        uvicorn.run(APP, factory=True, host=host, port=port, log_level="warning")
        return
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no inherited engine or locks
    stopping = False

    def start() -> multiprocessing.Process:
        p = context.Process(target=_worker, args=(host, port), daemon=True)
        p.start()
        return p

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs = [start() for _ in range(workers)]
    try:
        while not stopping:
            time.sleep(0.2)
            for i, p in enumerate(procs):
                if not p.is_alive() and not stopping:
                    time.sleep(1)  # a worker that cannot start must not spin
                    procs[i] = start()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(timeout=10)


def _worker(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    config = uvicorn.Config(APP, factory=True, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
