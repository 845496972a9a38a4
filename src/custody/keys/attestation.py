"""Attestation on key release: a zone may require evidence of what runs the reader.

The custodian issues a fresh nonce per release; the reader returns evidence over it; a verifier
turns evidence into claims (a measurement of the code and platform that will hold the plaintext)
or refuses. Anything missing, stale, replayed or unverifiable refuses the release (fail closed).
Claims reach the policy catalog as `context.attested` and `context.measurement`, so a catalog
can allow a critical model's reads only from a known measurement.

custody ships one verifier, `signed-json`: evidence is a JSON document
`{"payload": base64(JSON {nonce, measurement, platform, issued_at}), "signature": base64(Ed25519)}`
signed by a key the workspace trusts (`[attestation] key`). It stands where a real TEE verifier
plugs in: NVIDIA's (nvtrust / NRAS) for confidential GPUs, AMD SEV-SNP or Intel TDX quotes checked
against the vendor's certificate chain, or a cloud attestation service's token (Azure MAA, Google
Confidential Space), each taking evidence and the nonce and returning the same `Claims`.

Configured in custody.toml (a file the database cannot change):
    [attestation]
    zones = ["prod"]                     # releases of keys in these zones need evidence
    verifier = "signed-json"
    key = "keys/attester.pub.pem"        # relative to the workspace, or absolute
    measurements = ["sha256:..."]        # optional: only these measurements are accepted
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from custody.domain.errors import CustodyError, Denied

NONCE_SECONDS = 120  # a nonce unused for this long is forgotten
EVIDENCE_SKEW = timedelta(minutes=5)
MAX_EVIDENCE = 64 * 1024


class AttestationRefused(Denied):
    """The evidence does not attest this release; the message says why."""


@dataclass(frozen=True)
class Claims:
    measurement: str
    platform: str
    nonce: str


class Verifier(Protocol):
    def verify(self, evidence: bytes, nonce: str) -> Claims:
        """Claims if `evidence` is good and over `nonce`; AttestationRefused otherwise."""


@dataclass(frozen=True)
class SignedJsonVerifier:
    key: Ed25519PublicKey

    def verify(self, evidence: bytes, nonce: str) -> Claims:
        if len(evidence) > MAX_EVIDENCE:
            raise AttestationRefused("attestation evidence is too large")
        try:
            doc = json.loads(evidence)
            payload = base64.b64decode(doc["payload"], validate=True)
            signature = base64.b64decode(doc["signature"], validate=True)
        except (ValueError, KeyError, TypeError):
            raise AttestationRefused("attestation evidence is malformed") from None
        try:
            self.key.verify(signature, payload)
        except InvalidSignature:
            raise AttestationRefused("attestation evidence is not signed by the trusted attester") from None
        try:
            claims = json.loads(payload)
            issued = datetime.fromisoformat(claims["issued_at"])
            measurement, platform, said = str(claims["measurement"]), str(claims["platform"]), claims["nonce"]
        except (ValueError, KeyError, TypeError):
            raise AttestationRefused("attestation evidence is malformed") from None
        if not isinstance(said, str) or not secrets.compare_digest(said, nonce):
            raise AttestationRefused("attestation evidence is over another nonce (replayed or stale)")
        if abs(datetime.now(timezone.utc) - issued) > EVIDENCE_SKEW:
            raise AttestationRefused("attestation evidence is too old or from the future")
        return Claims(measurement=measurement, platform=platform, nonce=nonce)


def signed_evidence(key: Ed25519PrivateKey, nonce: str, measurement: str, platform: str = "test") -> bytes:
    """Evidence in the signed-json format (what a test attester, or an agent beside a reader, makes)."""
    payload = json.dumps({"nonce": nonce, "measurement": measurement, "platform": platform,
                          "issued_at": datetime.now(timezone.utc).isoformat()}).encode()
    return json.dumps({"payload": base64.b64encode(payload).decode(),
                       "signature": base64.b64encode(key.sign(payload)).decode()}).encode()


@dataclass
class Attestation:
    """Which zones need evidence, who verifies it, and the nonces this custodian issued (single use)."""

    zones: frozenset[str] = frozenset()
    verifier: Verifier | None = None
    measurements: frozenset[str] = frozenset()
    _nonces: dict[str, float] = field(default_factory=dict)
    _verified: dict[int, Claims] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def required(self, zone: str) -> bool:
        return zone in self.zones

    def nonce(self) -> str:
        now = time.monotonic()
        value = secrets.token_urlsafe(24)
        with self._lock:
            for old in [n for n, at in self._nonces.items() if now - at > NONCE_SECONDS]:
                del self._nonces[old]
            self._nonces[value] = now
        return value

    def check(self, zone: str, evidence: bytes | None) -> Claims | None:
        """Claims for this release (None where the zone needs none and none was given)."""
        if evidence is None:
            if self.required(zone):
                raise AttestationRefused(f"zone {zone} releases keys only to an attested reader: ask for a nonce "
                                         "and present evidence over it")
            return None
        if self.verifier is None:
            raise AttestationRefused("evidence was given but no attestation verifier is configured")
        nonce = _nonce_of(evidence)
        with self._lock:
            issued = self._nonces.pop(nonce, None)  # single use, whatever the verdict
        if issued is None or time.monotonic() - issued > NONCE_SECONDS:
            raise AttestationRefused("attestation evidence is over a nonce this custodian did not issue, or one "
                                     "already used or expired")
        claims = self.verifier.verify(evidence, nonce)
        if self.measurements and claims.measurement not in self.measurements:
            raise AttestationRefused(f"measurement {claims.measurement[:80]} is not one this workspace accepts")
        with self._lock:
            self._verified[id(claims)] = claims
        return claims

    def spend(self, zone: str, claims: Claims | None) -> None:
        """At release: the claims must be ones this custodian verified and not yet used."""
        if claims is None:
            if self.required(zone):
                raise AttestationRefused(f"zone {zone} releases keys only to an attested reader")
            return
        with self._lock:
            if self._verified.pop(id(claims), None) is not claims:
                raise AttestationRefused("these attestation claims were not verified for this release")


def _nonce_of(evidence: bytes) -> str:
    """The nonce the evidence claims (checked for real by the verifier's signature)."""
    try:
        doc = json.loads(evidence)
        nonce = json.loads(base64.b64decode(doc["payload"], validate=True))["nonce"]
    except (ValueError, KeyError, TypeError):
        raise AttestationRefused("attestation evidence is malformed") from None
    if not isinstance(nonce, str):
        raise AttestationRefused("attestation evidence is malformed")
    return nonce


def from_config(table: object, home: Path, config: Path) -> Attestation:
    """`[attestation]` of custody.toml; a bad table is a clear error at start, never a silent skip."""
    if table is None:
        return Attestation()
    if not isinstance(table, dict):
        raise CustodyError(f"{config}: [attestation] must be a table")
    unknown = set(table) - {"zones", "verifier", "key", "measurements"}
    if unknown:
        raise CustodyError(f"{config}: [attestation] has no setting {sorted(unknown)[0]!r}")
    zones, measurements = table.get("zones", []), table.get("measurements", [])
    if not isinstance(zones, list) or not all(isinstance(z, str) for z in zones):
        raise CustodyError(f"{config}: [attestation] zones must be a list of zone names")
    if not isinstance(measurements, list) or not all(isinstance(m, str) for m in measurements):
        raise CustodyError(f"{config}: [attestation] measurements must be a list of strings")
    kind = table.get("verifier", "signed-json")
    if kind != "signed-json":
        raise CustodyError(f"{config}: [attestation] verifier {kind!r} is not one custody has (signed-json)")
    if "key" not in table or not isinstance(table["key"], str):
        raise CustodyError(f"{config}: [attestation] key must name the attester's public key (PEM)")
    path = Path(table["key"]) if Path(table["key"]).is_absolute() else home / table["key"]
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CustodyError(f"{config}: [attestation] key {path} is not a readable PEM public key: "
                           f"{getattr(exc, 'strerror', None) or 'not PEM'}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CustodyError(f"{config}: [attestation] key must be an Ed25519 public key")
    return Attestation(zones=frozenset(zones), verifier=SignedJsonVerifier(key), measurements=frozenset(measurements))
