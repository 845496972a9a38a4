"""Shared fixtures: real workspaces on real SQLite and PostgreSQL, real model folders."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from custody.cli.main import app
from custody.control.services import setup
from custody.control.workspace import Workspace

PASSPHRASE = "correct horse battery staple"
PG_URL = os.environ.get("CUSTODY_TEST_PG_URL")
CUSTODY_BIN = str(Path(sys.executable).with_name("custody"))


def reset_postgres(url: str) -> None:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CUSTODY_HOME", "CUSTODY_TOKEN", "CUSTODY_DB_URL", "CUSTODY_PASSPHRASE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CUSTODY_SCRYPT_LOG_N", "14")  # the floor, to keep tests quick


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A database of this test run's own, so two runs on one server never meet."""
    if not PG_URL:
        pytest.skip("CUSTODY_TEST_PG_URL is not set (make test sets it)")
    name = f"custody_test_{os.getpid()}"
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        reset_postgres(url)
        monkeypatch.setenv("CUSTODY_DB_URL", url)
    return request.param


@dataclass
class Env:
    """A live workspace and what a test needs to act in it."""

    home: Path
    token: str
    backend: str

    def open(self) -> Workspace:
        return Workspace.open(self.home)

    def environ(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"CUSTODY_HOME": str(self.home), "CUSTODY_TOKEN": self.token, "CUSTODY_PASSPHRASE": PASSPHRASE})
        env.update(extra)
        return env


# -- the custodian every test workspace uses ---------------------------------------------------

CUSTODIAN = os.environ.get("CUSTODY_TEST_CUSTODIAN", "local")  # local | pkcs11 | aws-kms: `make test` runs all three


@pytest.fixture(scope="session")
def custodian_options() -> tuple[str, dict]:
    """(kind, init options) for CUSTODY_TEST_CUSTODIAN, starting the real component it needs once per run: a
    SoftHSM2 token (tests/softhsm.py) or a moto server process (tests/moto_server.py). Their secrets (PIN,
    credentials) go into this process's environment, which every custody process a test starts inherits."""
    if CUSTODIAN == "local":
        yield "local", {}
    elif CUSTODIAN == "pkcs11":
        import softhsm

        with softhsm.token() as options:
            yield "pkcs11", options
    elif CUSTODIAN == "aws-kms":
        import moto_server

        with moto_server.kms() as options:
            yield "aws-kms", options
    else:
        raise pytest.UsageError(f"CUSTODY_TEST_CUSTODIAN={CUSTODIAN!r}: use local, pkcs11 or aws-kms")


def make_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str,
             custodian: tuple[str, dict] = ("local", {})) -> Env:
    home = tmp_path / "ws"
    kind, options = custodian
    result = setup.init_workspace(home, passphrase=PASSPHRASE, scrypt_log_n=14, custodian=kind,
                                  custodian_options=dict(options))
    monkeypatch.setenv("CUSTODY_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("CUSTODY_HOME", str(home))
    return Env(home=home, token=result.admin_token, backend=backend)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, custodian_options: tuple[str, dict]) -> Env:
    """A workspace on SQLite."""
    return make_env(tmp_path, monkeypatch, "sqlite", custodian_options)


@pytest.fixture
def pg_env(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, custodian_options: tuple[str, dict]) -> Env:
    """A workspace on PostgreSQL alone: where several processes share one store."""
    reset_postgres(pg_url)
    monkeypatch.setenv("CUSTODY_DB_URL", pg_url)
    return make_env(tmp_path, monkeypatch, "postgresql", custodian_options)


@pytest.fixture
def any_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_backend: str,
            custodian_options: tuple[str, dict]) -> Env:
    """The same workspace on SQLite and on PostgreSQL."""
    return make_env(tmp_path, monkeypatch, db_backend, custodian_options)


# -- running the CLI --------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self):  # noqa: ANN201
        return json.loads(self.stdout)


def cli(*args: str, token: str | None = None, env: dict[str, str] | None = None) -> Result:
    """Run the CLI in-process (same code path as the console script, much faster)."""
    runner = CliRunner()
    full_env = dict(env or {})
    if token is not None:
        full_env["CUSTODY_TOKEN"] = token
    r = runner.invoke(app, list(args), env=full_env, catch_exceptions=False)
    return Result(r.exit_code, r.stdout, r.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(args: list[str], environ: dict[str, str], timeout: float = 30, cwd: Path | None = None):  # noqa: ANN201
    """A real `custody serve --port P ARGS` process; yields its base URL once /healthz answers."""
    port = free_port()
    proc = subprocess.Popen([CUSTODY_BIN, "serve", "--port", str(port), *args], env=environ, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError("custody serve did not come up: " + proc.stderr.read().decode()[-800:]) from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def serving(env: Env, *args: str, **environ: str):  # noqa: ANN201
    """`custody serve` on a test workspace (extra environment variables as keywords)."""
    return server_process(list(args), env.environ(**environ))


def run_custody(*args: str, env: dict[str, str], timeout: float = 120, input_text: str | None = None) -> Result:
    """Run the installed `custody` console script in a real process (`input_text` on its standard input)."""
    p = subprocess.run([CUSTODY_BIN, *args], env=env, capture_output=True, text=True, timeout=timeout,
                       input=input_text, stdin=None if input_text is not None else subprocess.DEVNULL)
    return Result(p.returncode, p.stdout, p.stderr)


# -- people ------------------------------------------------------------------------------------

from custody.control.services.identity import GOVERNED_ROLES as GOVERNED  # noqa: E402  (added by proposal)
OFFICERS = ("officer-a", "officer-b")  # the bootstrap security officers who approve identity proposals


@dataclass
class People:
    """Principals made the way custody requires: two bootstrap security officers (kept apart, so the
    one-time codes of the people a test approves with are unspent), then every principal with power
    through an identity proposal carrying its own token's public part, approved by the officers."""

    env: Env
    tokens: dict[str, str]
    secrets: dict[str, str]
    steps: dict[str, int]

    @classmethod
    def of(cls, env: Env) -> "People":
        return cls(env, {"admin": env.token}, {}, {})

    def t(self, who: str) -> str:
        return self.tokens[who]

    __getitem__ = t

    def otp(self, who: str) -> str:
        """A code for the next unused time step (codes are single use; the server accepts ±1 step).

        Starts at the previous step while more than 10 s of the current one are left (so it cannot
        slip out of the window before the server checks it), else at the current one, and waits for
        the clock when a principal has used up the window."""
        import pyotp
        from datetime import datetime, timezone

        totp = pyotp.TOTP(self.secrets[who])
        while True:
            now = totp.timecode(datetime.now(timezone.utc))
            left = totp.interval - time.time() % totp.interval  # the previous step stays good till then
            step = max(now - 1 if left > 10 else now, self.steps.get(who, -1) + 1)
            if step <= now + 1:
                break
            time.sleep(totp.interval - time.time() % totp.interval + 0.05)
        self.steps[who] = step
        return totp.generate_otp(step)

    def enroll(self, who: str) -> None:
        """Enrol a second factor and put it in force with a first code."""
        r = cli("mfa", "enroll", "--json", token=self.tokens[who])
        assert r.code == 0, r.stdout
        self.secrets[who] = r.json["secret"]
        r = cli("mfa", "verify", self.otp(who), "--json", token=self.tokens[who])
        assert r.code == 0 and r.json["activated"], r.stdout

    def _officers(self) -> None:
        if OFFICERS[0] in self.tokens:
            return
        for name in OFFICERS:
            r = cli("principal", "add", name, "--role", "security", "--team", "security-office", "--json",
                    token=self.env.token)
            assert r.code == 0 and "token" in r.json, r.stdout
            self.tokens[name] = r.json["token"]
            self.enroll(name)

    def add(self, spec: dict[str, tuple], *, enroll: bool = True, by: str = "admin") -> dict[str, str]:
        """Add NAME: (ROLE, TEAM[, ATTRIBUTES]) for each entry; approvers (ml-lead, security) get a
        second factor in force unless `enroll` is false. Returns the new tokens (also kept in `tokens`)."""
        if any(entry[0] in GOVERNED for entry in spec.values()):
            self._officers()
        pending = []
        for name, (role, team, *attrs) in spec.items():
            args = ["principal", "add", name, "--role", role, "--json"] + (["--team", team] if team else [])
            args += [f"--attr={k}={v}" for k, v in (attrs[0] if attrs else {}).items()]
            if role in GOVERNED:  # a principal with power makes its own token; the proposal carries its public part
                made = cli("principal", "new-token", "--json").json
                self.tokens[name] = made["token"]
                args += ["--public-token", made["public"]]
            r = cli(*args, token=self.tokens[by])
            assert r.code == 0, r.stdout
            if "proposal" in r.json:
                pending.append(r.json["proposal"])
            else:
                self.tokens[name] = r.json["token"]
        if pending:  # the second approval adds each principal
            for officer in OFFICERS:
                r = cli("principal", "approve", *pending, "--otp", self.otp(officer), "--json",
                        token=self.tokens[officer])
                assert r.code == 0 and all(p["state"] == "applied" for p in r.json) == (officer == OFFICERS[-1]), r.stdout
        if enroll:
            for name, (role, *_) in spec.items():
                if role in ("ml-lead", "security"):
                    self.enroll(name)
        return {name: self.tokens[name] for name in spec}


def people(env: Env, spec: dict[str, tuple], **kw) -> People:  # noqa: ANN003
    """A People with `spec` added (see People.add)."""
    found = People.of(env)
    found.add(spec, **kw)
    return found


# -- model files ------------------------------------------------------------------------------

ST_DTYPES = {"float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32", "uint8": "U8"}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, arr in tensors.items():
        size = arr.nbytes
        header[name] = {"dtype": ST_DTYPES[str(arr.dtype)], "shape": list(arr.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for arr in tensors.values():
            fh.write(np.ascontiguousarray(arr).tobytes())


def hf_model(root: Path, seed: int = 0, big: int = 0) -> dict[str, np.ndarray]:
    """A folder laid out like a Hugging Face model; returns every tensor written."""
    rng = np.random.default_rng(seed)
    shard1 = {
        "model.embed.weight": rng.standard_normal((256, 64)).astype(np.float32),
        "model.layers.0.attn.weight": rng.standard_normal((64, 64)).astype(np.float16),
    }
    shard2 = {
        "model.layers.1.mlp.weight": rng.standard_normal((128, 64)).astype(np.float32),
        "model.norm.bias": rng.standard_normal(64).astype(np.float32),
        "lm_head.ids": rng.integers(0, 1000, size=(32,), dtype=np.int64),
    }
    if big:
        shard2["model.big"] = rng.integers(0, 255, size=(big,), dtype=np.uint8)
    write_safetensors(root / "model-00001-of-00002.safetensors", shard1, {"format": "pt"})
    write_safetensors(root / "model-00002-of-00002.safetensors", shard2)
    (root / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 64}))
    (root / "tokenizer").mkdir(parents=True, exist_ok=True)
    (root / "tokenizer" / "tokenizer.json").write_text(json.dumps({"version": "1.0", "vocab": {"a": 0}}))
    (root / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    return {**shard1, **shard2}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "tiny-model"
    hf_model(root)
    return root


def register(env: Env, path: Path, name: str = "tiny", *extra: str) -> dict:
    r = cli("asset", "register", name, str(path), "--json", *extra, token=env.token)
    assert r.code == 0, r.stdout + r.stderr
    return r.json


def last_event(env: Env) -> dict:
    from custody.control.ledger import store as ledger

    ws = env.open()
    try:
        with ws.uow(readonly=True) as uow:
            n = ledger.size(uow)
            return json.loads(ledger.event_line(uow, n - 1))
    finally:
        ws.close()


def events(env: Env) -> list[dict]:
    from custody.control.ledger import store as ledger

    ws = env.open()
    try:
        with ws.uow(readonly=True) as uow:
            return [json.loads(line) for _, line in ledger.events(uow)]
    finally:
        ws.close()
