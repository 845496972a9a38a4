"""Running the API and portal: one Uvicorn process, or several that share the port.

With several workers each process binds its own socket with SO_REUSEPORT, so the kernel
spreads connections across them. (One shared listening socket, as `uvicorn --workers` uses,
lets whichever process is awake accept most keep-alive connections: under load one worker
did nearly all the work while the other idled.) A worker that dies is started again.

The client's address (what the authentication back-off counts by) is the socket's peer. Only a
peer listed in CUSTODY_TRUSTED_PROXIES may name another in X-Forwarded-For: Uvicorn by default
believes any loopback peer, so a client on this machine could claim a fresh address per request.
"""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import re
import signal
import socket
import time

import uvicorn

from custody.control.services import health
from custody.control.workspace import Workspace
from custody.domain.errors import InvalidInput, InvalidState

APP = "custody.api.app:app_from_env"


def trusted_proxies() -> list[str]:
    """CUSTODY_TRUSTED_PROXIES: the addresses or networks (comma-separated) of the reverse proxies
    whose X-Forwarded-For names the client. Empty by default: no forwarded header is believed."""
    found = []
    for item in re.split(r"[,\s]+", os.environ.get("CUSTODY_TRUSTED_PROXIES", "")):
        if not item:
            continue
        try:
            found.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise InvalidInput(f"CUSTODY_TRUSTED_PROXIES: {item!r} is not an IP address or network") from None
    return found


def proxy_options() -> dict:
    """Uvicorn's settings for forwarded headers: off unless some proxy is trusted, then only from those."""
    trusted = trusted_proxies()
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted}


def check(ws: Workspace) -> None:
    """Refuse to serve a workspace others on this machine can open (a copied keyring faces offline
    passphrase guessing, a copied database is read at leisure), or a proxy list that does not parse."""
    proxy_options()
    exposed = health.exposed(ws.home)
    if exposed:
        raise InvalidState(f"the workspace is not private: {exposed[0]}; run chmod -R go-rwx {ws.home}")


def serve(host: str, port: int, workers: int) -> None:
    if workers <= 1:
        uvicorn.run(APP, factory=True, host=host, port=port, log_level="warning", **proxy_options())
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
    config = uvicorn.Config(APP, factory=True, log_level="warning", **proxy_options())
    uvicorn.Server(config).run(sockets=[sock])
