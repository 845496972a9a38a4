"""The policy catalog in force, and changing it: propose, approve (two security sign-offs), apply.

The active catalog lives in the workspace's `policies/` folder; its hash is recorded in the
store and in every decision. A folder whose hash differs from the recorded one was changed
outside this door, and every decision fails closed until that is put right.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from custody.control.door import act
from custody.control.policy.catalog import Catalog
from custody.control.services import identity
from custody.control.services.signoffs import counting, sign_off
from custody.control.store import repositories as repo
from custody.control.store import requests_repo as rq
from custody.control.store.db import UnitOfWork
from custody.control.workspace import Workspace
from custody.domain.errors import CustodyError, Denied, IntegrityError, InvalidInput, InvalidState

POLICY_DIR = "policies"
PROPOSAL_APPROVALS = 2
_loaded: dict[str, Catalog] = {}  # parsed once per process, keyed by catalog hash


def install_default(home: Path) -> Catalog:
    """Copy the shipped default catalog into a new workspace."""
    target = home / POLICY_DIR
    shutil.copytree(Catalog.default_folder(), target)
    return Catalog.load(target)


def active_catalog(ws: Workspace, uow: UnitOfWork) -> Catalog:
    expected = repo.get_meta(uow, "policy_hash")
    if expected in _loaded:
        catalog = _loaded[expected]
        current = Catalog.folder_hash(ws.home / POLICY_DIR)
    else:
        catalog = Catalog.load(ws.home / POLICY_DIR)
        current = catalog.hash
        _loaded[catalog.hash] = catalog
    if expected is None or current != expected:
        raise IntegrityError(
            f"policy catalog in {ws.home / POLICY_DIR} is not the active one (hash {current[:12]}…, "
            f"expected {str(expected)[:12]}…): change it with `custody policy propose` and `apply`"
        )
    return catalog


def show(ws: Workspace, token: str | None) -> dict:
    with act(ws, token, "policy.read") as a:
        return active_catalog(ws, a.uow).describe()


def test(ws: Workspace, token: str | None, folder: Path | None = None) -> dict:
    """Run a catalog's own cases: the active one, or a candidate folder before proposing it."""
    with act(ws, token, "policy.read", details={"what": "test", "folder": str(folder) if folder else None}) as a:
        catalog = Catalog.load(folder) if folder else active_catalog(ws, a.uow)
        results = catalog.run_tests()
        failed = [r for r in results if not r.passed]
        out = {"hash": catalog.hash, "cases": len(results), "failed": len(failed),
               "results": [{"name": r.name, "passed": r.passed, "detail": r.detail} for r in results]}
        a.record(outcome="ok" if not failed else "failed", details={"cases": len(results), "failed": len(failed)})
    if failed:
        raise PolicyTestsFailed(f"{len(failed)} of {len(results)} catalog cases failed: "
                                f"{', '.join(r.name for r in failed[:5])}", out)
    return out


class PolicyTestsFailed(CustodyError):
    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result

    @property
    def details(self) -> dict:
        return self.result


def propose(ws: Workspace, token: str | None, folder: Path, purpose: str) -> dict:
    if not purpose or not purpose.strip():
        raise InvalidInput("a policy proposal needs a purpose")
    with act(ws, token, "policy.propose", rationale=purpose) as a:
        candidate = Catalog.load(folder)  # refuses syntax errors and schema violations
        _own_cases_pass(candidate)
        old = repo.get_meta(a.uow, "policy_hash")
        if candidate.hash == old:
            raise InvalidState("the proposed catalog is the active one")
        pid = rq.add_proposal(a.uow, catalog_hash=candidate.hash, base_hash=old, files=candidate.files,
                              purpose=purpose, proposer=a.principal.name)
        a.subject = pid
        a.record(details={"old_hash": old, "new_hash": candidate.hash})
    return {"proposal": pid, "hash": candidate.hash, "old_hash": old, "approvals_needed": PROPOSAL_APPROVALS}


def _own_cases_pass(catalog: Catalog) -> None:
    failed = [r.name for r in catalog.run_tests() if not r.passed]
    if failed:
        raise InvalidInput(f"the catalog fails {len(failed)} of its own cases: {', '.join(failed[:3])}")


def approve(ws: Workspace, token: str | None, proposal_id: str, otp: str | None, comment: str | None) -> dict:
    with act(ws, token, "policy.approve", subject=proposal_id) as a:
        p = rq.proposal_by_id(a.uow, proposal_id)
        if p["state"] != "proposed":
            raise InvalidState(f"proposal {proposal_id} is {p['state']}")
        sign_off(ws, a, "policy", proposal_id, _statement(p), otp=otp, comment=comment,
                 exclude=p["proposer"], since=p["created_at"])
        count = _valid_policy_approvals(ws, a.uow, p)
        a.record(details={"catalog_hash": p["catalog_hash"], "approvals": count})
    return {"proposal": proposal_id, "approvals": count, "needed": PROPOSAL_APPROVALS}


def _statement(p: dict) -> dict:
    return {"catalog_hash": p["catalog_hash"], "base_hash": p["base_hash"]}


def _valid_policy_approvals(ws: Workspace, uow: UnitOfWork, p: dict) -> int:
    return len(counting(ws, uow, "policy", p["id"], _statement(p), roles=("security",), exclude=p["proposer"],
                        since=p["created_at"], distinct_teams=False))


def apply(ws: Workspace, token: str | None, proposal_id: str) -> dict:
    with act(ws, token, "policy.apply", subject=proposal_id) as a:
        p = rq.proposal_by_id(a.uow, proposal_id)
        if p["state"] != "proposed":
            raise InvalidState(f"proposal {proposal_id} is {p['state']}")
        count = _valid_policy_approvals(ws, a.uow, p)
        if count < PROPOSAL_APPROVALS:
            blocked = identity.missing_approvers(a.uow)
            raise Denied(f"proposal {proposal_id} has {count} of {PROPOSAL_APPROVALS} security approvals"
                         + (f"; {blocked}" if blocked else ""))
        old = repo.get_meta(a.uow, "policy_hash")
        if p["base_hash"] != old:
            raise InvalidState(f"proposal {proposal_id} was made against catalog {str(p['base_hash'])[:12]}…, "
                               f"not the active {str(old)[:12]}…: propose it again")
        staged = ws.home / f"{POLICY_DIR}.new-{proposal_id}"
        _write_files(staged, p["files"])
        catalog = Catalog.load(staged)
        if catalog.hash != p["catalog_hash"]:
            shutil.rmtree(staged, ignore_errors=True)
            raise IntegrityError("the stored proposal no longer hashes to what was approved")
        try:
            _own_cases_pass(catalog)
        except CustodyError:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        repo.set_meta(a.uow, "policy_hash", catalog.hash)
        rq.set_proposal_state(a.uow, proposal_id, "applied")
        a.record(details={"old_hash": old, "new_hash": catalog.hash})
        _swap_in(ws.home / POLICY_DIR, staged)  # last step inside the transaction: a failure rolls back
    _loaded[catalog.hash] = catalog
    return {"proposal": proposal_id, "old_hash": old, "new_hash": catalog.hash}


def _write_files(folder: Path, files: dict[str, str]) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    for rel, text in files.items():
        target = folder / rel
        if not target.resolve().is_relative_to(folder.resolve()):
            raise IntegrityError(f"proposal file {rel!r} escapes the catalog folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def _swap_in(active: Path, staged: Path) -> None:
    retired = active.with_name(active.name + ".old")
    shutil.rmtree(retired, ignore_errors=True)
    os.replace(active, retired)
    try:
        os.replace(staged, active)
    except OSError:
        os.replace(retired, active)
        raise
    shutil.rmtree(retired, ignore_errors=True)
