"""Creating a workspace: keyring, keys, database, default zones and the first admin."""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from custody.control import tokens
from custody.control.ledger import store as ledger
from custody.control.services.policy import install_default
from custody.control.store import db
from custody.control.store import repositories as repo
from custody.control.workspace import CONFIG, DEMO_PASSPHRASE, Workspace, db_url_for
from custody.data.zones import ZoneStorage
from custody.domain.errors import AuthenticationError, CustodyError, InvalidInput
from custody.domain.model import Principal, Zone, ZoneKind, new_id
from custody.keys import backends
from custody.keys.local import DEFAULT_LOG_N

DEFAULT_ZONES: tuple[tuple[str, ZoneKind, int], ...] = (
    ("prod", ZoneKind.PRODUCTION, 4),
    ("backup", ZoneKind.BACKUP, 4),
    ("dr", ZoneKind.DR, 4),
    ("research", ZoneKind.RESEARCH, 3),
    ("quarantine", ZoneKind.QUARANTINE, 3),
)


@dataclass(frozen=True)
class InitResult:
    home: Path
    admin_token: str
    demo: bool
    custodian: str = "local"
    shares: list[str] | None = None  # Shamir shares of a local keyring's master secret, shown once


def init_workspace(
    home: Path,
    *,
    passphrase: str | None,
    demo: bool = False,
    jurisdiction: str = "US",
    region: str = "local",
    scrypt_log_n: int | None = None,
    custodian: str = "local",
    custodian_options: dict | None = None,
) -> InitResult:
    """`scrypt_log_n`: the keyring's work factor; by default CUSTODY_SCRYPT_LOG_N when set (tests and
    demos lower it), else DEFAULT_LOG_N. `custodian` names the backend (keys/backends.py) and
    `custodian_options` its settings (a token label, a KMS endpoint, Shamir shares)."""
    if scrypt_log_n is None:
        scrypt_log_n = int(os.environ.get("CUSTODY_SCRYPT_LOG_N", DEFAULT_LOG_N))
    home = home.resolve()
    if (home / CONFIG).exists():
        raise InvalidInput(f"{home} already holds a custody workspace")
    options = dict(custodian_options or {})
    if custodian == "local" and not passphrase and not options.get("shares"):
        if not demo:
            raise AuthenticationError("set CUSTODY_PASSPHRASE to seal the keyring (or use --demo for a throwaway workspace)")
        passphrase = secrets.token_urlsafe(24)
    created_home = not home.exists()
    ours = (CONFIG, "keys", "zones", "policies", "custody.db", "custody.db-wal", "custody.db-shm",
            "custody.db-writers.lock")
    present = [name for name in ours if (home / name).exists()]
    if present:
        raise InvalidInput(f"{home} already holds {present[0]}: refusing to create a workspace over it")
    umask = os.umask(0o077)  # a private workspace: folders 0700, files 0600 (`custody serve` checks)
    try:
        options.setdefault("passphrase", passphrase)
        options.setdefault("log_n", scrypt_log_n)
        return _init(home, passphrase, demo, jurisdiction, region, custodian, options)
    except BaseException:
        # Leave nothing half-made, and remove only what this call created (checked above).
        if created_home:
            shutil.rmtree(home, ignore_errors=True)
        else:
            for name in ours:
                target = home / name
                if target.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                elif target.exists():
                    target.unlink()
        raise
    finally:
        os.umask(umask)


def _init(home: Path, passphrase: str | None, demo: bool, jurisdiction: str, region: str, kind: str,
          options: dict) -> InitResult:
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    ws_id = new_id()
    url = db_url_for(home)
    engine = db.make_engine(url)
    db.migrate(engine)
    with db.transaction(engine) as uow:
        if repo.get_meta(uow, "workspace_id") is not None:
            raise CustodyError(f"database {url.split('@')[-1]} already holds a workspace")
    engine.dispose()

    (home / "keys").mkdir(exist_ok=True)
    custodian, table = backends.create(kind, home, ws_id, options)
    (home / "keys" / "signing.pub.pem").write_bytes(custodian.public_key_pem("signing"))
    (home / "keys" / "ledger.pub.pem").write_bytes(custodian.public_key_pem("ledger"))
    (home / "keys" / "witness.pub.pem").write_bytes(custodian.public_key_pem("witness"))
    if demo and passphrase:
        demo_file = home / DEMO_PASSPHRASE
        demo_file.write_text(passphrase + "\n")
        demo_file.chmod(0o600)
    zones = []
    for name, zone_kind, level in DEFAULT_ZONES:
        folder = home / "zones" / name
        folder.mkdir(parents=True, exist_ok=True)
        zone = Zone(name, folder.as_uri(), zone_kind, region, jurisdiction, level, custodian=kind)
        ZoneStorage(zone.url).ensure_root()
        zones.append(zone)
        custodian.ensure_zone(name)
    config = f'[workspace]\nid = "{ws_id}"\n'
    if os.environ.get("CUSTODY_DB_URL"):
        config += f'db_url = "{url}"\n'
    config += "\n[custodian]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items() if not k.startswith("_"))
    fd = os.open(home / CONFIG, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # may hold a database password
    with os.fdopen(fd, "w") as fh:
        fh.write(config)

    catalog = install_default(home)
    token, token_id, token_hash = tokens.mint()
    admin = Principal(id=new_id(), name="admin", roles=("admin",), team="platform")
    ws = Workspace(home=home, id=ws_id, db_url=url, engine=db.make_engine(url), custodian_table=table,
                   _custodian=custodian)
    with ws.uow() as uow:
        repo.set_meta(uow, "workspace_id", ws_id)
        ledger.append(uow, actor="system", action="workspace.init", outcome="ok", subject=ws_id,
                      details={"demo": demo, "origin": ws.origin})
        for z in zones:
            repo.add_zone(uow, z)
            ledger.append(uow, actor="system", action="zone.add", outcome="ok", subject=z.name,
                          details={"kind": z.kind.value, "jurisdiction": z.jurisdiction})
        repo.set_meta(uow, "policy_hash", catalog.hash)
        ledger.append(uow, actor="system", action="policy.install", outcome="ok", subject=catalog.hash,
                      details={"new_hash": catalog.hash, "source": "default catalog"})
        repo.add_principal(uow, admin, token_id, token_hash)
        ledger.append(uow, actor="system", action="principal.add", outcome="ok", subject="admin",
                      details={"roles": ["admin"]})
    ws.close()
    return InitResult(home=home, admin_token=token, demo=demo, custodian=kind, shares=table.get("_shares"))


def _toml_value(value: object) -> str:
    """A TOML scalar: JSON's string escapes are valid TOML basic strings."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))
