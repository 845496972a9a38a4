"""Tests for checkpoints as C2SP signed notes.

Known answers:
* golang.org/x/mod sumdb/note/note_test.go: the PeterNeumann signer and verifier keys and the
  exact signed note they produce (Ed25519 is deterministic, so signing must match byte for byte);
* a real sum.golang.org checkpoint (as quoted in transparency-dev/trillian-tessera's checkpoint
  parser tests), checked with the Go checksum database key that the go command ships.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from custody.control.ledger.checkpoint import (
    MAX_NOTE_BYTES,
    Checkpoint,
    key_hash,
    parse,
    parse_vkey,
    sign,
    sign_text,
    verify,
    vkey,
)
from custody.domain.errors import IntegrityError

EM = "\u2014"

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_NOTE = (
    PETER_TEXT
    + "\n"
    + f"{EM} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"

SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_NOTE = (
    "go.sum database tree\n"
    "31700353\n"
    "qINS1GRFhWHwdkUeqLEoP4yEMkTBBzxBkGwGQlVlVcs=\n"
    "\n"
    f"{EM} sum.golang.org Az3grnmrIUEDFqHzAElIQCPNoRFRAAdFo47fooyWKMHb89k11GJh5zHIfNCOBmwn/C3YI8oW9/C8DJ87F61QqspBYwM=\n"
)

NAME = "custody.example/ledger"
ROOT = bytes(range(32))


def peter_private() -> Ed25519PrivateKey:
    seed = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert seed[0] == 0x01
    return Ed25519PrivateKey.from_private_bytes(seed[1:])


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def note(key: Ed25519PrivateKey) -> str:
    return sign(Checkpoint(NAME, 1234, ROOT), NAME, key)


# --------------------------------------------------------------------------- known answers


def test_peter_neumann_key_hash_and_vkey() -> None:
    name, public = parse_vkey(PETER_VKEY)
    assert name == "PeterNeumann"
    assert key_hash(name, public) == bytes.fromhex("c74f20a3")
    assert vkey(name, public) == PETER_VKEY
    assert vkey("PeterNeumann", peter_private().public_key()) == PETER_VKEY
    enoch_name, enoch = parse_vkey(ENOCH_VKEY)
    assert key_hash(enoch_name, enoch) == bytes.fromhex("af0cfe78")


def test_peter_neumann_signed_note_is_byte_exact() -> None:
    assert sign_text(PETER_TEXT, "PeterNeumann", peter_private()) == PETER_NOTE


def test_sum_golang_org_checkpoint_verifies() -> None:
    name, public = parse_vkey(SUMDB_VKEY)
    assert key_hash(name, public).hex() == "033de0ae"
    cp = verify(SUMDB_NOTE, name, public)
    assert cp == Checkpoint(
        "go.sum database tree", 31700353, base64.b64decode("qINS1GRFhWHwdkUeqLEoP4yEMkTBBzxBkGwGQlVlVcs=")
    )
    edited = SUMDB_NOTE.replace("31700353", "31700354")
    with pytest.raises(IntegrityError, match="does not verify"):
        verify(edited, name, public)


def test_parse_vkey_rejects_manglings() -> None:
    for bad in (
        PETER_VKEY.replace("c74f20a3", "c74f20a4"),
        PETER_VKEY[:-1],
        PETER_VKEY.replace("+ARpc", "+AhRpc"),
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ):
        with pytest.raises(IntegrityError):
            parse_vkey(bad)


# --------------------------------------------------------------------------- round trip


def test_body_format() -> None:
    cp = Checkpoint("example.com/log", 0, b"\x00" * 32)
    assert cp.body() == b"example.com/log\n0\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"


def test_sign_verify_round_trip(key: Ed25519PrivateKey, note: str) -> None:
    body, _, sig_line = note.partition("\n\n")
    assert body + "\n" == Checkpoint(NAME, 1234, ROOT).body().decode()
    assert sig_line.startswith(f"{EM} {NAME} ") and sig_line.endswith("\n")
    cp = verify(note, NAME, key.public_key())
    assert cp == Checkpoint(NAME, 1234, ROOT)
    assert verify(note.encode(), NAME, key.public_key()) == cp
    parsed, signatures = parse(note)
    assert parsed == cp
    assert [(n, h) for n, h, _ in signatures] == [(NAME, key_hash(NAME, key.public_key()))]
    assert len(signatures[0][2]) == 64


@settings(max_examples=50, deadline=None)
@given(
    origin=st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, exclude_categories=("Cs",)), min_size=1
    ),
    size=st.integers(min_value=0, max_value=2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
)
def test_round_trip_any_checkpoint(origin: str, size: int, root: bytes) -> None:
    private = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
    cp = Checkpoint(origin, size, root)
    assert verify(sign(cp, NAME, private), NAME, private.public_key()) == cp


def test_other_signatures_are_ignored(key: Ed25519PrivateKey, note: str) -> None:
    witness = Ed25519PrivateKey.generate()
    cosigned = sign_text(note.partition("\n\n")[0] + "\n", "witness.example", witness)
    both = note + cosigned.partition("\n\n")[2]
    assert verify(both, NAME, key.public_key()) == Checkpoint(NAME, 1234, ROOT)
    assert verify(both, "witness.example", witness.public_key()) == Checkpoint(NAME, 1234, ROOT)
    # A foreign line first, under the ledger's name but another key hash, is skipped too.
    impostor = sign(Checkpoint(NAME, 1234, ROOT), NAME, Ed25519PrivateKey.generate()).partition("\n\n")[2]
    assert verify(note + impostor, NAME, key.public_key()).size == 1234


# --------------------------------------------------------------------------- rejections


def test_wrong_key_or_name_fails(key: Ed25519PrivateKey, note: str) -> None:
    with pytest.raises(IntegrityError, match="not signed by the ledger key"):
        verify(note, NAME, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(IntegrityError, match="not signed by the ledger key"):
        verify(note, "other.example/ledger", key.public_key())


def test_claimed_but_bad_signature_rejects_the_note(key: Ed25519PrivateKey, note: str) -> None:
    body, _, line = note.partition("\n\n")
    name, blob = line[2:-1].split(" ")
    raw = base64.b64decode(blob)
    forged = raw[:4] + bytes([raw[4] ^ 1]) + raw[5:]
    bad = f"{body}\n\n{EM} {name} {base64.b64encode(forged).decode()}\n"
    with pytest.raises(IntegrityError, match="checkpoint signature does not verify with the ledger key"):
        verify(bad, NAME, key.public_key())
    short = f"{body}\n\n{EM} {name} {base64.b64encode(raw[:40]).decode()}\n"
    with pytest.raises(IntegrityError, match="does not verify"):
        verify(short, NAME, key.public_key())
    # One good and one bad line for the same key: the note is refused.
    with pytest.raises(IntegrityError, match="does not verify"):
        verify(note + bad.partition("\n\n")[2], NAME, key.public_key())


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("\n1234\n", "\n1235\n"),
        (NAME + "\n", "custody.example/other\n"),
        (base64.b64encode(ROOT).decode(), base64.b64encode(bytes(32)).decode()),
    ],
)
def test_edited_fields_fail(key: Ed25519PrivateKey, note: str, old: str, new: str) -> None:
    edited = note.replace(old, new, 1)
    assert edited != note
    with pytest.raises(IntegrityError):
        verify(edited, NAME, key.public_key())


def test_truncated_notes_fail(key: Ed25519PrivateKey, note: str) -> None:
    for cut in range(len(note)):
        with pytest.raises(IntegrityError):
            verify(note[:cut], NAME, key.public_key())


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n.replace(EM, "-"),  # ASCII hyphen instead of the em dash
        lambda n: n.replace("\n\n", "\n"),  # no blank line
        lambda n: n[:-1],  # no final newline
        lambda n: n + "\n",  # trailing blank line
        lambda n: n + "junk\n",  # unexpected line after the signatures
        lambda n: n.replace("\n\n", "\nextension\n\n"),  # extension line
        lambda n: n.replace("\n1234\n", "\n01234\n"),  # leading zero
        lambda n: n.replace("\n1234\n", "\n+1234\n"),
        lambda n: n.replace("\n1234\n", "\n-1234\n"),
        lambda n: n.replace("\n1234\n", "\n１２３４\n"),  # non-ASCII digits
        lambda n: n.replace("\n1234\n", "\n18446744073709551616\n"),  # 2**64
        lambda n: n.replace("\n1234\n", "\n\n"),
        lambda n: n.replace(base64.b64encode(ROOT).decode(), "not*base64"),
        lambda n: n.replace(base64.b64encode(ROOT).decode(), base64.b64encode(ROOT).decode()[:-1]),
        lambda n: n.replace(base64.b64encode(ROOT).decode(), base64.b64encode(ROOT[:31]).decode()),
        lambda n: n.replace(base64.b64encode(ROOT).decode(), base64.b64encode(ROOT).decode().rstrip("=")),
        lambda n: n.replace(NAME + "\n", "\n", 1),  # empty origin
        lambda n: n.replace(f"{EM} {NAME} ", f"{EM} {NAME}  "),
        lambda n: n.replace(f"{EM} {NAME} ", f"{EM} bad+name "),
        lambda n: n.replace(f"{EM} {NAME} ", f"{EM}  "),
        lambda n: n.rpartition(" ")[0] + " !!!!\n",  # junk base64 signature
        lambda n: n.rpartition(" ")[0] + " AAAA\n",  # too short to hold a key hash and signature
        lambda n: n.replace("\n1234\n", "\n1234\r\n"),  # control character
        lambda n: n.replace(NAME, NAME + "\x00", 1),
        lambda n: n.replace(NAME, NAME + "\ud800", 1),  # lone surrogate: not UTF-8
        lambda n: n.partition("\n\n")[0] + "\n\n",  # no signatures at all
        lambda n: n + n.partition("\n\n")[2] * 100,  # too many signature lines
    ],
)
def test_malformed_notes_fail(key: Ed25519PrivateKey, note: str, mangle: Callable[[str], str]) -> None:
    bad = mangle(note)
    assert bad != note
    with pytest.raises(IntegrityError):
        verify(bad, NAME, key.public_key())
    with pytest.raises(IntegrityError):
        parse(bad)


def test_size_limit_and_bad_bytes(key: Ed25519PrivateKey, note: str) -> None:
    huge = "x" * MAX_NOTE_BYTES + note
    with pytest.raises(IntegrityError, match="too large"):
        parse(huge)
    with pytest.raises(IntegrityError, match="too large"):
        parse(huge.encode())
    # Under the limit in characters but over it in UTF-8 bytes.
    with pytest.raises(IntegrityError, match="too large"):
        parse("\u00e9" * (MAX_NOTE_BYTES // 2 + 1) + note)
    with pytest.raises(IntegrityError, match="UTF-8"):
        parse(b"\xff" + note.encode())
    with pytest.raises(IntegrityError):
        parse(12345)  # type: ignore[arg-type]


def test_checkpoint_and_signing_arguments_are_validated(key: Ed25519PrivateKey) -> None:
    for args in (("", 1, ROOT), ("a\nb", 1, ROOT), ("a", -1, ROOT), ("a", 2**64, ROOT), ("a", 1, ROOT[:31])):
        with pytest.raises(ValueError):
            Checkpoint(*args)
    cp = Checkpoint(NAME, 1, ROOT)
    for name in ("", "has space", "has+plus", "tab\there"):
        with pytest.raises(ValueError):
            sign(cp, name, key)
        with pytest.raises(ValueError):
            verify(sign(cp, NAME, key), name, key.public_key())
    with pytest.raises(ValueError):
        sign_text("no final newline", NAME, key)
