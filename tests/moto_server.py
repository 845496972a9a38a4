"""A real moto server process for the aws-kms custodian (a helper module, not a test file).

`kms()` starts `moto_server -H 127.0.0.1 -p PORT` on a free port, waits until it answers, puts test
credentials into this process's environment (every custody process a test starts inherits them; the
previous values come back afterwards) and yields the `custody init` options that point at it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    found = shutil.which("moto_server")
    if found:
        return [found, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@contextlib.contextmanager
def server(timeout: float = 30) -> Iterator[str]:
    """A moto server process; yields its base URL once it answers HTTP."""
    port = _free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(_command(port), stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                httpx.get(f"{base}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"moto_server did not come up on {base}: "
                                       + log.read().decode(errors="replace")[-800:]) from None
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def credentials() -> Iterator[None]:
    """moto's test credentials in os.environ, the previous values restored afterwards."""
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def kms() -> Iterator[dict[str, str]]:
    """`custody init` options for an aws-kms custodian on a fresh moto server."""
    with server() as base, credentials():
        yield {"endpoint_url": base, "region": CREDENTIALS["AWS_DEFAULT_REGION"]}
