"""A custody workspace: its folder, configuration, database and key custodian.

Layout of a workspace folder:
    custody.toml        id, ledger origin, database URL, custodian kind, [ledger] checkpoint schedule,
                        [witness] url (where the ledger's witness keeps its cosigned checkpoints)
    custody.db          the SQLite store (unless the database is PostgreSQL)
    keys/keyring.sealed the local custodian's sealed keyring
    keys/release.journal the custodian's own record of every key it released (keys/journal.py)
    keys/*.pub.pem      public keys, readable without the passphrase
    zones/<name>/       the default local zones
    ledger/checkpoint   the newest signed ledger checkpoint, a copy outside the database
    witness/            the witness's cosigned checkpoints, unless [witness] url names another place
"""

from __future__ import annotations

import os
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine

from custody.control.records import RecordKeys
from custody.control.store import db
from custody.control.store import repositories as repo
from custody.data.zones import ZoneStorage
from custody.domain.errors import AuthenticationError, CustodyError, IntegrityError, NotFound
from custody.domain.model import Zone
from custody.keys.custodian import KeyCustodian, Purpose
from custody.keys.journal import Journal
from custody.keys.release import Release

CONFIG = "custody.toml"
KEYRING = "keys/keyring.sealed"
JOURNAL = "keys/release.journal"
DEMO_PASSPHRASE = "keys/DEMO-PASSPHRASE-NOT-FOR-PRODUCTION"


def default_home() -> Path:
    return Path(os.environ.get("CUSTODY_HOME") or ".custody")


def db_url_for(home: Path, configured: str | None = None) -> str:
    return os.environ.get("CUSTODY_DB_URL") or configured or f"sqlite:///{(home / 'custody.db').resolve()}"


@dataclass
class Workspace:
    home: Path
    id: str
    db_url: str
    engine: Engine
    custodian_table: dict = field(default_factory=lambda: {"kind": "local"})  # [custodian] in custody.toml
    attestation_table: dict | None = field(default=None, repr=False)  # [attestation] in custody.toml
    _custodian: KeyCustodian | None = field(default=None, repr=False)
    _release: Release | None = field(default=None, repr=False)
    _records: RecordKeys | None = field(default=None, repr=False)
    checkpoint_every_events: int = 1000  # [ledger] in custody.toml: when to sign a checkpoint automatically
    checkpoint_every_seconds: float = 60.0
    newest_checkpoint: tuple[int, float] | None = field(default=None, repr=False)  # (size, unix time) last seen
    cryptoperiods: dict[str, float] = field(default_factory=dict)  # [keys] kek_days, signing_days, ... in custody.toml
    witness_url: str = ""  # [witness] url in custody.toml: an fsspec URL; "" is the folder witness/ here

    @classmethod
    def open(cls, home: Path | None = None) -> "Workspace":
        home = (home or default_home()).resolve()
        try:
            config = tomllib.loads((home / CONFIG).read_text())
        except FileNotFoundError:
            raise NotFound(f"no custody workspace at {home}: run `custody init` first") from None
        except tomllib.TOMLDecodeError as exc:
            raise CustodyError(f"{home / CONFIG} is malformed: {exc}") from None
        ws_id = config["workspace"]["id"]
        url = db_url_for(home, config["workspace"].get("db_url"))
        engine = db.make_engine(url)
        if db.current_revision(engine) != db.HEAD_REVISION:
            db.migrate(engine)
        events, seconds = _checkpoint_schedule(config.get("ledger", {}), home / CONFIG)
        witness_url = _witness_url(config.get("witness", {}), home / CONFIG, home)
        ws = cls(home=home, id=ws_id, db_url=url, engine=engine, checkpoint_every_events=events,
                 checkpoint_every_seconds=seconds, custodian_table=config.get("custodian", {"kind": "local"}),
                 attestation_table=config.get("attestation"),
                 cryptoperiods=_cryptoperiods(config.get("keys", {}), home / CONFIG), witness_url=witness_url)
        with ws.uow() as uow:
            stored = repo.get_meta(uow, "workspace_id")
        if stored != ws_id:
            raise IntegrityError(f"database at {url.split('@')[-1]} belongs to another workspace")
        return ws

    @property
    def origin(self) -> str:
        """The ledger's checkpoint origin line and signer name."""
        return f"custody/{self.id}"

    @contextmanager
    def uow(self, readonly: bool = False) -> Iterator[db.UnitOfWork]:
        with db.transaction(self.engine, readonly, self.records) as uow:
            yield uow
        for kind, ident, digest in uow.signed:  # committed: the custodian notes each row's newest signed state
            self.release().journal.record(kind, ident, digest)

    @property
    def records(self) -> RecordKeys:
        """Signs principal and zone rows with the custodian (only when custody writes one) and checks
        them with the public key in the workspace folder (on every read)."""
        if self._records is None:
            reader = Journal(self.home / JOURNAL, None)  # what the custodian noted; read without its secret
            self._records = RecordKeys(lambda data: self.custodian().sign("signing", data),
                                       lambda: self.public_key_pem("signing"), reader.newest_record, reader.recorded)
        return self._records

    def passphrase(self) -> str:
        value = os.environ.get("CUSTODY_PASSPHRASE")
        if value:
            return value
        demo = self.home / DEMO_PASSPHRASE
        if demo.exists():
            return demo.read_text().strip()
        raise AuthenticationError("CUSTODY_PASSPHRASE is not set: the keyring stays sealed")

    def custodian(self) -> KeyCustodian:
        if self._custodian is None:
            from custody.keys import backends

            self._custodian = backends.open_custodian(self.home, self.id, self.custodian_table, self.passphrase)
        return self._custodian

    def release(self) -> Release:
        """The custodian's release decisions, with its own journal (never the database)."""
        if self._release is None:
            custodian = self.custodian()
            from custody.keys import attestation

            self._release = Release(custodian, Journal(self.home / JOURNAL, custodian.secret("journal")),
                                    attestation.from_config(self.attestation_table, self.home, self.home / CONFIG))
        return self._release

    def public_key_pem(self, purpose: Purpose) -> bytes:
        path = self.home / "keys" / f"{purpose}.pub.pem"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no {purpose} public key in the workspace") from None

    def zone_storage(self, zone: Zone) -> ZoneStorage:
        return ZoneStorage(zone.url)

    def close(self) -> None:
        self.engine.dispose()


def _checkpoint_schedule(table: object, path: Path) -> tuple[int, float]:
    """`[ledger] checkpoint_every_events` and `checkpoint_every_seconds`, positive, 1000 and 60 by default."""
    if not isinstance(table, dict):
        raise CustodyError(f"{path}: [ledger] must be a table")
    events, seconds = table.get("checkpoint_every_events", 1000), table.get("checkpoint_every_seconds", 60)
    if isinstance(events, bool) or not isinstance(events, int) or events < 1:
        raise CustodyError(f"{path}: [ledger] checkpoint_every_events must be a whole number of at least 1")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise CustodyError(f"{path}: [ledger] checkpoint_every_seconds must be a number of seconds above 0")
    return events, float(seconds)


def _witness_url(table: object, path: Path, home: Path) -> str:
    """`[witness] url`: where the ledger's witness keeps its state, an fsspec URL (s3://bucket/prefix, ...) or
    a folder (relative to the workspace); by default the folder witness/ here. Put it where the database's
    writers cannot reach, or the witness guards against less."""
    if not isinstance(table, dict):
        raise CustodyError(f"{path}: [witness] must be a table")
    unknown = sorted(set(table) - {"url"})
    if unknown:
        raise CustodyError(f"{path}: [witness] {unknown[0]} is not a setting: use url")
    url = table.get("url", "witness")
    if not isinstance(url, str) or not url.strip() or any(ord(ch) < 0x20 for ch in url):
        raise CustodyError(f"{path}: [witness] url must be a non-empty fsspec URL or folder")
    import fsspec  # here, not at import: most commands never read this

    protocol = fsspec.core.split_protocol(url)[0]
    if protocol is None:
        return str((home / url).resolve()) if not Path(url).is_absolute() else url
    if protocol not in fsspec.available_protocols():
        raise CustodyError(f"{path}: [witness] url {url!r}: fsspec knows no protocol {protocol!r}")
    return url


def _cryptoperiods(table: object, path: Path) -> dict[str, float]:
    """`[keys] kek_days`, `signing_days`, `ledger_days`, `witness_days`: days, above 0 (fractions for drills)."""
    if not isinstance(table, dict):
        raise CustodyError(f"{path}: [keys] must be a table")
    out = {}
    for name, value in table.items():
        purpose = name.removesuffix("_days")
        if not name.endswith("_days") or purpose not in ("kek", "signing", "ledger", "witness"):
            raise CustodyError(f"{path}: [keys] {name} is not a setting: use kek_days, signing_days, ledger_days "
                               "or witness_days")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise CustodyError(f"{path}: [keys] {name} must be a number of days above 0")
        out[purpose] = value
    return out
