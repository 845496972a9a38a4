"""The ledger's witness (c2sp.org/tlog-witness, c2sp.org/tlog-cosignature v1) and the attacks it exposes.

Known answers:
* a real checkpoint of the arche2025h1 CT log cosigned by the public witness remora.n621.de, checked with
  that witness's published verifier key (as quoted in the tlog_scales test suite);
* the example cosignature and signed message of c2sp.org/tlog-cosignature.

The attacks are made as someone with write access to the database would: triggers dropped, the newest
events deleted (with their tree nodes and the head, consistently), history rewritten and the tree rebuilt,
the stored checkpoints and the workspace's `ledger/checkpoint` copy deleted. Only the witness, kept
outside the database, is left to notice, and `custody audit verify` must exit 5 naming its checkpoint.
"""

from __future__ import annotations

import base64
import json
import re
import stat
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from conftest import Env, cli, events
from custody.control.ledger import checkpoint, merkle, witness
from custody.control.ledger import store as ledger
from custody.control.ledger.checkpoint import Checkpoint
from custody.control.ledger.witness import Witness, WitnessConflict
from custody.domain.errors import IntegrityError, InvalidInput, NotFound

EM = "\u2014"

# -- known answers -----------------------------------------------------------------------------

REMORA_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
ARCHE_NOTE = (
    "arche2025h1.staging.ct.transparency.dev\n"
    "1432088532\n"
    "U7WM79jrzyhGZ5/GUBTpM7NzwdyfFx61t3RovgcC4Ro=\n"
    "\n"
    f"{EM} arche2025h1.staging.ct.transparency.dev zTM8sQAAAZ5W0WdjBAMARjBEAiBjW5IQf9pvsYLfQFX6hoGREPMHbdQ3urbll"
    "zalApkptQIgIpwtEroeW2BXaHAI4kJXFbon5Ch9MNL5zRNZ55lvGt0=\n"
    f"{EM} arche2025h1.staging.ct.transparency.dev ui8GwCF1+kWqZrxGdhj4aX3gcw7XUlXQQabg/27lefwhUkzbC3NygNI75MdhL1bf"
    "TW9g8Ei59RA23oHP7Ry1k3ZFWwQ=\n"
    f"{EM} transparency.dev/DEV:witness-little-garden 2AQqhwAAAABqEiEgzgFIqqhbUoDwjMWE6UP8nd8/KYTzwZ2rhIgcqoXHAwVkjZr4"
    "AscylP3v7sEodkRAErumC2q44vdgJY096st5BQ==\n"
    f"{EM} witness1.smartit.nu/witness1 pIyCDwAAAABqEiEghIp82KWebrw7/oHQwlTAm3g2RKS4+eebl8eO0WH+/iEcxZ75W3u5hNI7TOQt"
    "mJbqmNWVuE0tgh0XwzdZsDsUAQ==\n"
    f"{EM} remora.n621.de 2net5wAAAABqEiEgPlfF3V06o0Y+fHM+J5J9s27wgxxcOVSpZ/2g/KSiXCg9DEZI+aVCIobWX9sXTynk5XeU/zZ0WBxt"
    "qB0DrAWfBw==\n"
    f"{EM} witness.stagemole.eu Z/euoAAAAABqEiEgw0i+7g2ENfDAWHmtRzCfKTHSDwYDJA2NmKeGi9Y8FtEyOUvVr+AJmIY/2TUFucgKi7l"
    "I7cUiOvKFYe/TmN9DAg==\n"
)
SPEC_LINE = (f"{EM} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nP"
             "Zqhf5nNo0xUe+mbIUBkBIfZ+qnA==")
SPEC_BODY = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SPEC_MESSAGE = (b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\n"
                b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n")


def cosigner_key(vkey: str) -> tuple[str, Ed25519PublicKey]:
    name, hash_hex, material = vkey.split("+", 2)
    raw = base64.b64decode(material)
    assert raw[0] == witness.ALG_COSIGNATURE_V1 and len(raw) == 33
    return name, Ed25519PublicKey.from_public_bytes(raw[1:])


def test_real_witness_cosignature_verifies() -> None:
    name, key = cosigner_key(REMORA_VKEY)
    assert witness.key_id(name, key).hex() == "da77ade7"
    assert witness.vkey(name, key) == REMORA_VKEY
    cp, when = witness.verify_cosigned(ARCHE_NOTE, name, key)
    assert cp == Checkpoint("arche2025h1.staging.ct.transparency.dev", 1432088532,
                            base64.b64decode("U7WM79jrzyhGZ5/GUBTpM7NzwdyfFx61t3RovgcC4Ro="))
    assert when == 1779573024
    with pytest.raises(IntegrityError, match="does not verify"):
        witness.verify_cosigned(ARCHE_NOTE.replace("1432088532", "1432088533"), name, key)
    with pytest.raises(IntegrityError, match="dated in the future"):
        witness.verify_cosigned(ARCHE_NOTE, name, key, now=1779573024 - 3600)
    # Not a plain signed-note signature: the 0x01 key hash of the same key names no line of the note.
    with pytest.raises(IntegrityError, match="not signed"):
        checkpoint.verify(ARCHE_NOTE, name, key)


def test_spec_example_layout() -> None:
    name, blob = SPEC_LINE[2:].split(" ")
    raw = base64.b64decode(blob)
    assert name == "witness.example.com/w1"
    assert len(raw) == 4 + 8 + 64  # key ID || u64 timestamp || Ed25519 signature
    assert int.from_bytes(raw[4:12], "big") == 1679315147
    assert witness.message(SPEC_BODY, 1679315147) == SPEC_MESSAGE
    with pytest.raises(ValueError):
        witness.message(SPEC_BODY, 1 << 63)


def test_cosign_round_trip_and_format() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pub = key.public_key()
    raw = pub.public_bytes(Encoding.Raw, PublicFormat.Raw)
    cp = Checkpoint("example.com/log", 42, bytes(32))
    line = witness.cosign(cp, "w.example/1", pub, key.sign, 1700000000)
    assert re.fullmatch(f"{EM} w\\.example/1 [A-Za-z0-9+/]{{100}}[A-Za-z0-9+/=]{{4}}\n", line)
    blob = base64.b64decode(line.split(" ")[2])
    # The key ID by hand: SHA-256(name || 0x0A || 0x04 || key)[:4]; the signature over the spec's message.
    import hashlib

    assert blob[:4] == hashlib.sha256(b"w.example/1\n\x04" + raw).digest()[:4]
    assert blob[4:12] == (1700000000).to_bytes(8, "big")
    body = b"example.com/log\n42\n" + base64.b64encode(bytes(32)) + b"\n"
    pub.verify(blob[12:], b"cosignature/v1\ntime 1700000000\n" + body)
    log = Ed25519PrivateKey.generate()
    note = checkpoint.sign(cp, "example.com/log", log) + line
    assert witness.verify_cosigned(note, "w.example/1", pub) == (cp, 1700000000)
    assert checkpoint.verify(note, "example.com/log", log.public_key()) == cp  # the log's line still verifies
    # A plain note signature by the witness key is not a cosignature (other key ID, other message).
    plain = checkpoint.sign(cp, "w.example/1", key)
    with pytest.raises(IntegrityError, match="no cosignature"):
        witness.verify_cosigned(plain, "w.example/1", pub)
    # Any altered byte of the cosignature refuses the note.
    for i in (5, 11, 20, 75):
        bad = bytearray(blob)
        bad[i] ^= 1
        forged = note.replace(line.split(" ")[2], base64.b64encode(bytes(bad)).decode())
        with pytest.raises(IntegrityError):
            witness.verify_cosigned(forged, "w.example/1", pub)


# -- the witness over a log in memory ------------------------------------------------------------

ORIGIN = "example.com/ledger"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
WITNESS_KEY = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)


class Log:
    def __init__(self, entries: list[bytes]) -> None:
        self.entries = list(entries)
        self.nodes = merkle.MemoryNodes()
        for e in entries:
            self.nodes.append(e)

    def note(self, size: int, key: Ed25519PrivateKey = LOG_KEY) -> str:
        return checkpoint.sign(Checkpoint(ORIGIN, size, merkle.root(size, self.nodes)), ORIGIN, key)

    def proof(self, old: int, new: int) -> list[bytes]:
        return merkle.consistency_proof(old, new, self.nodes) if 0 < old < new else []


def make_witness(folder: Path, clock: float = 1_700_000_000) -> Witness:
    return Witness(str(folder), "w.example/witness", WITNESS_KEY.public_key(), {ORIGIN: LOG_KEY.public_key()},
                   WITNESS_KEY.sign, lock=folder / ".lock", clock=lambda: clock)


def entries(n: int, tag: str = "e") -> list[bytes]:
    return [f"{tag}{i}".encode() for i in range(n)]


def test_witness_cosigns_growth_and_keeps_every_note(tmp_path: Path) -> None:
    log = Log(entries(20))
    w = make_witness(tmp_path / "w")
    line = w.add_checkpoint(0, [], log.note(5))
    assert line.startswith(f"{EM} w.example/witness ")
    held = w.latest(ORIGIN)
    assert held is not None and held.checkpoint.size == 5 and held.timestamp == 1_700_000_000
    assert held.note == log.note(5) + line
    w.add_checkpoint(5, log.proof(5, 13), log.note(13))
    assert w.latest(ORIGIN).checkpoint.size == 13
    folder = tmp_path / "w" / witness.origin_dir(ORIGIN)
    assert sorted(p.name for p in folder.iterdir()) == ["13", "5", "latest"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "13").stat().st_mode) == 0o600
    assert (folder / "latest").read_text() == (folder / "13").read_text()
    assert w.location(ORIGIN) == f"{tmp_path / 'w'}/{folder.name}/latest"
    # The same checkpoint again: the same statement, nothing rewritten.
    assert w.add_checkpoint(13, [], log.note(13)) == w.latest(ORIGIN).note.splitlines(keepends=True)[-1]


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6),
       data=st.data())
def test_any_append_only_growth_is_accepted_and_any_rewritten_prefix_refused(sizes: list[int],
                                                                             data: st.DataObject) -> None:
    steps = sorted(set(sizes))
    log = Log(entries(steps[-1] + 8))
    with tempfile.TemporaryDirectory() as folder:
        w = make_witness(Path(folder))
        held = 0
        for size in steps:
            w.add_checkpoint(held, log.proof(held, size), log.note(size))
            held = size
            assert w.latest(ORIGIN).checkpoint.size == size
        # Now a history whose first `held` entries differ in one place, at any size from the one held on.
        at = data.draw(st.integers(min_value=0, max_value=held - 1))
        new = data.draw(st.integers(min_value=held, max_value=held + 8))
        forged = list(log.entries)
        forged[at] = b"rewritten " + forged[at]
        fork = Log(forged)
        with pytest.raises(IntegrityError):
            w.add_checkpoint(held, fork.proof(held, new), fork.note(new))
        with pytest.raises(IntegrityError):  # nor does the honest proof carry it
            w.add_checkpoint(held, log.proof(held, new), fork.note(new))
        assert w.latest(ORIGIN).checkpoint == Checkpoint(ORIGIN, held, merkle.root(held, log.nodes))


def test_fork_wrong_old_size_and_bad_signatures_are_refused(tmp_path: Path) -> None:
    log = Log(entries(12))
    fork = Log(entries(12, tag="f"))
    w = make_witness(tmp_path / "w")
    w.add_checkpoint(0, [], log.note(6))
    with pytest.raises(IntegrityError, match="does not extend"):  # a fork: another history grown further
        w.add_checkpoint(6, fork.proof(6, 9), fork.note(9))
    with pytest.raises(WitnessConflict, match="forked") as same:  # the same size, another root
        w.add_checkpoint(6, [], fork.note(6))
    assert same.value.size == 6
    with pytest.raises(WitnessConflict) as conflict:  # tlog-witness 409: the body is the size it holds
        w.add_checkpoint(4, log.proof(4, 9), log.note(9))
    assert conflict.value.size == 6 and conflict.value.details == {"witness_size": 6} and conflict.value.exit_code == 5
    with pytest.raises(WitnessConflict):
        w.add_checkpoint(0, [], log.note(9))
    with pytest.raises(InvalidInput):  # 400: an old size above the new one
        w.add_checkpoint(10, [], log.note(9))
    with pytest.raises(InvalidInput):
        w.add_checkpoint(6, [bytes(32)] * 64, log.note(9))
    with pytest.raises(IntegrityError, match="not signed by the ledger key"):  # 403
        w.add_checkpoint(6, log.proof(6, 9), log.note(9, key=Ed25519PrivateKey.generate()))
    other = checkpoint.sign(Checkpoint("other.example/log", 1, bytes(32)), "other.example/log", LOG_KEY)
    with pytest.raises(NotFound):  # 404
        w.add_checkpoint(0, [], other)
    body, _, sig = log.note(9).partition("\n\n")
    raw = base64.b64decode(sig.split(" ")[2])
    broken = f"{body}\n\n{EM} {ORIGIN} {base64.b64encode(raw[:10] + bytes([raw[10] ^ 1]) + raw[11:]).decode()}\n"
    with pytest.raises(IntegrityError, match="does not verify"):
        w.add_checkpoint(6, log.proof(6, 9), broken)
    assert w.latest(ORIGIN).checkpoint.size == 6
    w.add_checkpoint(6, log.proof(6, 9), log.note(9))  # the honest growth still goes through
    assert w.latest(ORIGIN).checkpoint.size == 9
    read_only = Witness(str(tmp_path / "w"), "w.example/witness", WITNESS_KEY.public_key(),
                        {ORIGIN: LOG_KEY.public_key()})
    with pytest.raises(InvalidInput):
        read_only.add_checkpoint(9, log.proof(9, 12), log.note(12))


def test_kept_notes_are_checked_and_write_once(tmp_path: Path) -> None:
    log = Log(entries(12))
    w = make_witness(tmp_path / "w")
    w.add_checkpoint(0, [], log.note(4))
    folder = tmp_path / "w" / witness.origin_dir(ORIGIN)
    # A note for size 8 planted ahead (not this witness's cosignature): write-once, so nothing is cosigned.
    (folder / "8").write_text(log.note(8))
    with pytest.raises(IntegrityError, match="write-once"):
        w.add_checkpoint(4, log.proof(4, 8), log.note(8))
    assert w.latest(ORIGIN).checkpoint.size == 4
    (folder / "8").unlink()
    w.add_checkpoint(4, log.proof(4, 8), log.note(8))
    kept = (folder / "8").read_text()
    # The latest note with its cosignature altered is refused, by the witness itself and by readers.
    line = kept.splitlines()[-1]
    blob = bytearray(base64.b64decode(line.split(" ")[2]))
    blob[-1] ^= 1
    (folder / "latest").write_text(kept.replace(line.split(" ")[2], base64.b64encode(bytes(blob)).decode()))
    with pytest.raises(IntegrityError, match="witness cosignature does not verify"):
        w.latest(ORIGIN)
    with pytest.raises(IntegrityError):
        w.add_checkpoint(8, log.proof(8, 12), log.note(12))


# -- the workspace: checkpoints are witnessed ------------------------------------------------------

TRIGGERS = [f"DROP TRIGGER IF EXISTS ledger_{table}_no_{what}"  # what guards the ledger on SQLite
            for table in ("events", "nodes", "checkpoints") for what in ("update", "delete")]


def fill(env: Env, n: int) -> None:
    for _ in range(n):
        assert cli("zone", "show", "prod", "--json", token=env.token).code == 0


def sql(env: Env, *statements: str, params: dict | None = None) -> None:
    ws = env.open()
    try:
        with ws.engine.connect() as conn, conn.begin():
            for s in statements:
                conn.execute(text(s), params or {})
    finally:
        ws.close()


def configure(env: Env, extra: str) -> None:
    with open(env.home / "custody.toml", "a") as fh:
        fh.write("\n" + extra + "\n")


def take(env: Env) -> dict:
    r = cli("audit", "checkpoint", "--json", token=env.token)
    assert r.code == 0, r.stdout + r.stderr
    return r.json


def verify(env: Env, *extra: str):  # noqa: ANN201
    return cli("audit", "verify", "--json", *extra, token=env.token)


def state(env: Env) -> dict:
    r = cli("audit", "witness", "--json", token=env.token)
    assert r.code == 0, r.stdout + r.stderr
    return r.json


def ledger_size(env: Env) -> int:
    ws = env.open()
    try:
        with ws.uow(readonly=True) as uow:
            return ledger.size(uow)
    finally:
        ws.close()


def test_checkpoints_are_cosigned_and_verified(env: Env) -> None:
    fresh = state(env)  # a new workspace: nothing cosigned (its first event makes the first checkpoint due)
    assert fresh["witnessed_size"] == 0 and fresh["time"] is None and fresh["root"] is None
    fill(env, 3)
    first = take(env)
    assert first["witness"]["witnessed"] is True and first["witness"]["witnessed_size"] == first["tree_size"]
    folder = env.home / "witness"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    s = state(env)
    ws = env.open()
    origin, name = ws.origin, f"custody-witness/{ws.id}"
    ws.close()
    assert s["origin"] == origin and s["witness"] == name and s["witnessed_size"] == first["tree_size"]
    assert s["location"] == f"{folder}/{witness.origin_dir(origin)}/latest" and s["time"].endswith("Z")
    kept = Path(s["location"]).read_text()
    assert kept.startswith(first["note"])  # the log's note, plus the cosignature line
    wpub = load_pem_public_key((env.home / "keys" / "witness.pub.pem").read_bytes())
    assert witness.verify_cosigned(kept, name, wpub)[0].size == first["tree_size"]
    assert s["vkey"] == witness.vkey(name, wpub)
    fill(env, 4)
    second = take(env)  # cosigned with a consistency proof from the first
    assert second["witness"]["witnessed_size"] == second["tree_size"] > first["tree_size"]
    assert (Path(s["location"]).parent / str(first["tree_size"])).read_text() == kept  # write-once, kept
    r = verify(env)
    assert r.code == 0, r.json
    assert r.json["witnessed_size"] == second["tree_size"] and r.json["witness_location"] == s["location"]
    pinned = env.home.parent / "witness.pem"
    pinned.write_bytes((env.home / "keys" / "witness.pub.pem").read_bytes())
    assert verify(env, "--witness-key", str(pinned)).code == 0
    human = cli("audit", "witness", token=env.token)
    assert human.code == 0 and f"cosigned size {second['tree_size']}" in human.stdout
    assert "witnessed up to" in cli("audit", "verify", token=env.token).stdout
    assert [e["action"] for e in events(env)].count("audit.witness") == 3


def test_automatic_checkpoints_are_witnessed(env: Env) -> None:
    configure(env, "[ledger]\ncheckpoint_every_events = 3\ncheckpoint_every_seconds = 3600")
    fill(env, 7)
    s = state(env)
    assert s["witnessed_size"] >= ledger_size(env) - 4 > 0
    assert verify(env).json["witnessed_size"] == s["witnessed_size"]


def test_a_witness_failure_is_ledgered_and_the_next_checkpoint_retries(env: Env) -> None:
    first = take(env)["tree_size"]
    blocker = env.home.parent / "not-a-folder"
    blocker.write_text("a file where the witness's folder should be")
    config = (env.home / "custody.toml").read_text()
    configure(env, f'[witness]\nurl = "{blocker}/w"')
    r = cli("audit", "checkpoint", "--json", token=env.token)
    assert r.code == 0  # the checkpoint is stored all the same
    failed = r.json
    assert failed["witness"]["witnessed"] is False and failed["witness"]["tree_size"] == failed["tree_size"]
    human = cli("audit", "checkpoint", token=env.token)
    assert human.code == 0 and "the witness did not cosign it" in human.stderr
    recorded = [e for e in events(env) if e["action"] == "ledger.witness"]
    assert recorded and recorded[0]["actor"] == "system" and recorded[0]["outcome"] != "ok"
    assert recorded[0]["details"]["tree_size"] == failed["tree_size"]
    (env.home / "custody.toml").write_text(config)  # the witness is back
    assert state(env)["witnessed_size"] == first
    fill(env, 2)
    retried = take(env)
    assert retried["witness"]["witnessed_size"] == retried["tree_size"]
    kept = sorted(int(p.name) for p in Path(state(env)["location"]).parent.iterdir() if p.name.isdigit())
    assert kept == [first, retried["tree_size"]]  # consistency from the size it held
    assert verify(env).code == 0


@pytest.mark.parametrize("setting, message", [
    ("[witness]\nurl = 5", "url must be"),
    ('[witness]\nurl = ""', "url must be"),
    ('[witness]\nurl = "nosuchproto://x"', "no protocol 'nosuchproto'"),
    ('[witness]\nplace = "x"', "place is not a setting"),
    ('witness = "x"', "[witness] must be a table"),
])
def test_bad_witness_settings_are_refused_clearly(env: Env, setting: str, message: str) -> None:
    if setting.startswith("witness ="):  # a top-level key must come before the tables
        (env.home / "custody.toml").write_text(setting + "\n" + (env.home / "custody.toml").read_text())
    else:
        configure(env, setting)
    r = cli("audit", "witness", "--json", token=env.token)
    assert r.code == 1 and message in r.json["error"] and "custody.toml" in r.json["error"], r.stdout


def test_a_relative_witness_folder_and_an_fsspec_url(env: Env, tmp_path: Path) -> None:
    config = (env.home / "custody.toml").read_text()
    configure(env, '[witness]\nurl = "elsewhere/w"')
    take(env)
    assert state(env)["location"].startswith(str(env.home / "elsewhere" / "w") + "/")
    (env.home / "custody.toml").write_text(config)
    configure(env, f'[witness]\nurl = "file://{tmp_path}/remote"')
    take(env)
    s = state(env)
    assert s["location"].startswith(f"file://{tmp_path}/remote/") and s["witnessed_size"] > 0
    assert (tmp_path / "remote" / s["location"].split("/")[-2] / "latest").exists()


# -- the attacks -------------------------------------------------------------------------------------


def witnessed(env: Env, events_before: int = 6) -> tuple[int, str]:
    """Some history, checkpointed and witnessed: (witnessed size, where the witness keeps it)."""
    fill(env, events_before)
    size = take(env)["tree_size"]
    fill(env, 3)
    s = state(env)
    assert s["witnessed_size"] == size
    return size, s["location"]


def truncate(env: Env, keep: int) -> None:
    """Delete every event from `keep` on with its tree nodes, and the head to match, as a database writer can."""
    ws = env.open()
    with ws.uow(readonly=True) as uow:
        nodes = [(int(lv), int(ix)) for lv, ix in uow.conn.execute(text("SELECT level, idx FROM ledger_nodes"))]
    ws.close()
    sql(env, *TRIGGERS, f"DELETE FROM ledger_events WHERE seq >= {keep}",
        *(f"DELETE FROM ledger_nodes WHERE level = {lv} AND idx = {ix}" for lv, ix in nodes if (ix + 1) << lv > keep),
        f"UPDATE ledger_head SET size = {keep}")


def forget_checkpoints(env: Env) -> None:
    """Every checkpoint but the witness's: the stored ones and the workspace copy."""
    sql(env, *[s for s in TRIGGERS if "checkpoints" in s], "DELETE FROM ledger_checkpoints")
    (env.home / "ledger" / "checkpoint").unlink()


def test_deleting_the_newest_events_and_every_checkpoint_is_caught_by_the_witness(env: Env) -> None:
    size, where = witnessed(env)
    keep = size - 2
    truncate(env, keep)
    forget_checkpoints(env)
    r = verify(env)
    assert r.code == 5
    assert r.json["error"] == (f"the witnessed checkpoint (size {size}, {where}) covers {size} events but the "
                               f"ledger holds only {keep}")
    # Checkpoints falling due sign nothing over the gap, and the witness is not moved.
    configure(env, "[ledger]\ncheckpoint_every_events = 2\ncheckpoint_every_seconds = 3600")
    fill(env, 5)
    assert cli("audit", "checkpoint", "--json", token=env.token).code == 5
    assert state(env)["witnessed_size"] == size


def test_truncating_the_tail_and_growing_again_is_caught(env: Env) -> None:
    size, where = witnessed(env)
    truncate(env, size - 3)
    forget_checkpoints(env)
    fill(env, 6)  # the ledger is longer than the witnessed tree again, over another history
    assert ledger_size(env) > size
    r = verify(env)
    assert r.code == 5
    assert r.json["error"] == (f"ledger does not match the witnessed checkpoint (size {size}, {where}): an event "
                               f"at or before seq {size - 1} was changed")
    assert state(env)["witnessed_size"] == size  # nothing was cosigned over the new history


def test_rewriting_an_old_event_with_a_rebuilt_tree_is_caught(env: Env) -> None:
    size, where = witnessed(env)
    ws = env.open()
    with ws.uow(readonly=True) as uow:
        lines = [line for _, line in ledger.events(uow)]
    ws.close()
    doc = json.loads(lines[2])
    doc["actor"] = "eve"
    lines[2] = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    rebuilt = merkle.MemoryNodes()
    for line in lines:
        rebuilt.append(line.encode())
    sql(env, *TRIGGERS, "UPDATE ledger_events SET line = :l, actor = 'eve' WHERE seq = 2", "DELETE FROM ledger_nodes",
        params={"l": lines[2]})
    ws = env.open()
    with ws.engine.connect() as conn, conn.begin():
        for (level, idx), h in rebuilt.nodes.items():
            conn.execute(text("INSERT INTO ledger_nodes (level, idx, hash) VALUES (:l, :i, :h)"),
                         {"l": level, "i": idx, "h": h})
    ws.close()
    forget_checkpoints(env)
    r = verify(env)
    assert r.code == 5
    assert r.json["error"] == (f"ledger does not match the witnessed checkpoint (size {size}, {where}): an event "
                               f"at or before seq {size - 1} was changed")


def test_a_tampered_witness_note_is_refused(env: Env) -> None:
    size, where = witnessed(env)
    kept = Path(where).read_text()
    line = kept.splitlines()[-1]
    blob = bytearray(base64.b64decode(line.split(" ")[2]))
    blob[20] ^= 1
    Path(where).write_text(kept.replace(line.split(" ")[2], base64.b64encode(bytes(blob)).decode()))
    r = verify(env)
    assert r.code == 5
    assert r.json["error"] == (f"the witnessed checkpoint {where} is refused: its witness cosignature does not "
                               "verify with the witness key")
    assert cli("audit", "witness", "--json", token=env.token).code == 5
    Path(where).write_text(kept)
    assert verify(env).code == 0
    other = env.home.parent / "other.pem"
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.PEM,
                                                                              PublicFormat.SubjectPublicKeyInfo))
    r = verify(env, "--witness-key", str(other))  # a pinned key that did not cosign it
    assert r.code == 5 and "no cosignature by the witness key" in r.json["error"]


def test_a_workspace_made_before_its_witness(env: Env) -> None:
    """Without keys/witness.pub.pem there is nothing to check until the first cosignature publishes it; deleting it
    afterwards hides nothing: what the witness keeps cannot be checked, and verify says so."""
    published = env.home / "keys" / "witness.pub.pem"
    pem = published.read_bytes()
    published.unlink()
    r = verify(env)
    assert r.code == 0 and r.json["witnessed_size"] is None  # nothing kept yet
    assert state(env)["witnessed_size"] > 0  # the first checkpoint fell due after verify's own event
    assert published.read_bytes() == pem  # ... and its cosignature published the key
    published.unlink()
    r = verify(env)
    assert r.code == 5 and "cannot be checked: the witness's public key is unknown" in r.json["error"]
