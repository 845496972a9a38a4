"""A real SoftHSM2 token for the pkcs11 custodian's tests (not a test module).

`token()` makes a token store of its own in a temporary folder, points SOFTHSM2_CONF at it, initialises a
token labelled `custody-test` and puts its PIN in CUSTODY_PKCS11_PIN; it yields the `custody init` options
that name the token. The environment is restored and the folder removed afterwards.

SoftHSM2 reads SOFTHSM2_CONF once, when the library is first loaded in a process (the custodian loads it
once per process), so one process uses one token store: make one token() per test run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"
LABEL = "custody-test"


def available() -> bool:
    return shutil.which("softhsm2-util") is not None and Path(LIBRARY).is_file()


@contextlib.contextmanager
def token(label: str = LABEL) -> Iterator[dict[str, str]]:
    if not available():
        raise RuntimeError("SoftHSM2 is not installed (make softhsm, or apt-get install softhsm2)")
    folder = Path(tempfile.mkdtemp(prefix="custody-softhsm-"))
    saved = {k: os.environ.get(k) for k in ("SOFTHSM2_CONF", "CUSTODY_PKCS11_PIN")}
    try:
        (folder / "tokens").mkdir()
        conf = folder / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\n"
                        "log.level = ERROR\nslots.removable = false\n")
        os.environ["SOFTHSM2_CONF"] = str(conf)
        pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", so_pin,
                        "--pin", pin], check=True, capture_output=True, text=True)
        os.environ["CUSTODY_PKCS11_PIN"] = pin
        yield {"library": LIBRARY, "token": label}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)
