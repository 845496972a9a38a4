"""Governed identity changes (DESIGN.md, "Identity is governed"; threat T1).

Adding an admin, a security officer, an approver (ml-lead), an on-call responder (who copies
without approval under break glass) or a service (which reads the production replicas of the zone
it is bound to without asking), and suspending an admin or a security officer, is a proposal: two
security officers approve it with a one-time code, none of them the proposer or a principal the
proposer added (directly or through others), none added after it was proposed. It takes effect
with its second approval.

Nobody but its holder ever sees the token of a principal with power: the holder makes it
(`custody principal new-token`, no server involved) and hands over only its public part
(ID:SHA256), which the proposal carries and the officers' signatures cover; officers approve once
the holder has confirmed that fingerprint to them. So neither the proposer nor an officer can act
through the principals they helped add.

A new workspace has one admin and no security officer, so nobody could approve the first ones:
while fewer than two active security officers exist (the bootstrap), the admin names security
officers directly, and every other governed change says exactly what is missing.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from custody.control import tokens, views
from custody.control.door import Act, act
from custody.control.services import mfa
from custody.control.services.signoffs import check_independent, counting, signed
from custody.control.store import identity_repo as ids
from custody.control.store import repositories as repo
from custody.control.store.db import UnitOfWork
from custody.control.workspace import Workspace
from custody.domain.errors import Denied, InvalidInput, InvalidState
from custody.domain.model import Principal, new_id

# added only through a proposal: administering, approving, copying without approval (on-call's break
# glass), or reading production weights without asking (service)
GOVERNED_ROLES = ("admin", "security", "ml-lead", "on-call", "service")
GUARDED_ROLES = ("admin", "security")  # their holders are suspended only through a proposal
APPROVER_ROLE = "security"
APPROVALS = 2
WINDOW = timedelta(hours=72)


def governed(roles: tuple[str, ...] | list[str]) -> list[str]:
    return [r for r in roles if r in GOVERNED_ROLES]


def security_officers(uow: UnitOfWork) -> list[Principal]:
    return [p for p in repo.list_principals(uow) if not p.suspended and p.has_role(APPROVER_ROLE)]


BOOTSTRAP_CLOSED = ("bootstrap", "security-officers", "closed")


def bootstrap_addition(uow: UnitOfWork, roles: list[str]) -> bool:
    """Whether adding a principal with `roles` is one of the first two security officers (made at
    once); raises when the change needs approvers that do not exist yet."""
    uow.serialise("identity")  # two bootstrap additions at once must not both see "fewer than two"
    officers = len(security_officers(uow))
    if officers >= APPROVALS:
        uow.signed.append(BOOTSTRAP_CLOSED)
        return False
    if uow.records is not None and uow.records.newest(*BOOTSTRAP_CLOSED[:2]) == BOOTSTRAP_CLOSED[2]:
        # the custodian noted two officers once: rows hidden from the store do not reopen the bootstrap
        raise InvalidState(f"this workspace has {officers} active security officers, but its bootstrap is over: "
                           "officers join by identity proposal (a suspended officer's proposal is approved by "
                           "the others)")
    if roles == [APPROVER_ROLE]:
        if officers + 1 >= APPROVALS:
            uow.signed.append(BOOTSTRAP_CLOSED)  # noted in the custodian's journal when this commits
        return True
    raise InvalidState(
        f"adding {' and '.join(governed(roles))} needs {APPROVALS} security officers to approve, and this workspace "
        f"has {officers}: name the first two with `custody principal add NAME --role security --team TEAM "
        "--public-token ID:SHA256` (each makes their token with `custody principal new-token`), then each runs "
        "`custody mfa enroll` and `custody mfa verify CODE`")


def missing_approvers(uow: UnitOfWork) -> str | None:
    """What stops any security approval from counting yet, in one line (None: nothing)."""
    officers = len(security_officers(uow))
    if officers >= APPROVALS:
        return None
    return (f"this workspace has {officers} of the {APPROVALS} security officers that approvals need: an admin names "
            "them with `custody principal add NAME --role security --team TEAM`")


def propose(ws: Workspace, a: Act, *, change: str, name: str, roles: list[str], team: str | None,
            attributes: dict[str, str], reason: str | None, public_token: str | None = None) -> dict:
    """Record the proposal inside the caller's action (`principal add` or `principal suspend`)."""
    token_id = token_hash = None
    if change == "add":
        if not public_token:
            raise InvalidInput(f"{name} will hold power ({', '.join(governed(roles))}): {name} makes their own token "
                               "with `custody principal new-token` and hands you its public part (--public-token)")
        token_id, token_hash = tokens.parse_public(public_token)
        if repo.principal_by_token_id(a.uow, token_id) is not None:
            raise InvalidInput(f"that token is someone else's already: {name} makes a new one")
    if change == "suspend" and len(security_officers(a.uow)) < APPROVALS:
        raise InvalidState(missing_approvers(a.uow))
    if change == "add":  # suspensions may be proposed side by side: a decoy one must not block a real one
        _no_open_addition(a.uow, name)
    pid = ids.add(a.uow, change=change, principal=name, roles=roles, team=team, attributes=attributes,
                  reason=(reason or "").strip(), proposer=a.principal.name, token_id=token_id, token_hash=token_hash)
    a.record(outcome="proposed", details={"proposal": pid, "change": change, "roles": roles, "team": team})
    return view(ws, a.uow, ids.by_id(a.uow, pid))


def _no_open_addition(uow: UnitOfWork, name: str) -> None:
    already = ids.open_for(uow, name, "add")
    if already is not None and already["created_at"] + WINDOW < datetime.now(timezone.utc):
        ids.set_state(uow, already["id"], "lapsed")
    elif already is not None:
        raise InvalidState(f"identity proposal {already['id']} to add {name} is still open")


def _statement(p: dict) -> dict:
    """What an approver signs: exactly this change to exactly this principal."""
    return {"change": p["change"], "principal": p["principal"], "roles": sorted(p["roles"]), "team": p["team"],
            "attributes": p["attributes"], "token": f"{p['token_id']}:{p['token_hash']}" if p["token_id"] else None}


def _counted(ws: Workspace, uow: UnitOfWork, p: dict) -> list:  # noqa: ANN001
    return counting(ws, uow, "identity", p["id"], _statement(p), roles=(APPROVER_ROLE,), exclude=p["proposer"],
                    since=p["created_at"])


def _open(p: dict) -> None:
    if p["state"] != "proposed":
        raise InvalidState(f"identity proposal {p['id']} is {p['state']}")
    if p["created_at"] + WINDOW < datetime.now(timezone.utc):
        raise InvalidState(f"identity proposal {p['id']} is older than {int(WINDOW.total_seconds() // 3600)} h: "
                           "propose it again")


def view(ws: Workspace, uow: UnitOfWork, p: dict) -> dict:
    counted = [s.approver for s in _counted(ws, uow, p)]
    out = {"proposal": p["id"], "change": p["change"], "principal": p["principal"], "roles": p["roles"],
           "team": p["team"], "attributes": p["attributes"], "reason": p["reason"], "proposer": p["proposer"],
           "state": p["state"], "created_at": views.ts(p["created_at"]), "applied_at": views.ts(p["applied_at"]),
           "approved_by": counted, "needed": APPROVALS, "token_fingerprint": fingerprint(p)}
    if p["state"] == "proposed":
        confirm = (f" once {p['principal']} has confirmed the token fingerprint {fingerprint(p)} to them"
                   if p["change"] == "add" else "")
        out["next"] = (f"{APPROVALS} security officers approve with `custody principal approve {p['id']} --otp CODE`"
                       f"{confirm}; the {'addition' if p['change'] == 'add' else 'suspension'} takes effect with the "
                       "second approval")
    return out


def fingerprint(p: dict) -> str | None:
    """What the future holder reads out to the officers (`principal new-token` prints it too): the start
    of their token's hash, which nobody can choose (a token's id is whatever its maker wrote)."""
    return tokens.fingerprint(p["token_hash"]) if p["token_hash"] else None


def approve(ws: Workspace, token: str | None, proposal_ids: list[str], otp: str | None = None,
            comment: str | None = None) -> list[dict]:
    """Approve identity proposals with one one-time code (onboarding a team is one review)."""
    wanted = list(dict.fromkeys(proposal_ids))
    if not wanted:
        raise InvalidInput("name at least one identity proposal to approve")
    with act(ws, token, "principal.approve", subject=wanted[0] if len(wanted) == 1 else None,
             rationale=comment, details={"proposals": wanted}) as a:
        a.uow.serialise("identity")
        proposals = [ids.by_id(a.uow, pid, lock=True) for pid in wanted]
        for p in proposals:
            _open(p)
            check_independent(a.uow, a.principal, p["proposer"], p["created_at"])
            if p["change"] == "suspend" and p["principal"] == a.principal.name:
                raise Denied("nobody approves their own suspension")
        mfa.check_code(ws, a.uow, a.principal.name, otp)
        out, counts = [], {}
        for p in proposals:
            signed(ws, a, "identity", p["id"], _statement(p), comment)
            counts[p["id"]] = len(_counted(ws, a.uow, p))
            if counts[p["id"]] >= APPROVALS:
                _take_effect(a, p)
            out.append(view(ws, a.uow, ids.by_id(a.uow, p["id"])))
        a.record(details={"proposals": wanted, "approvals": counts})
    return out


def _take_effect(a: Act, p: dict) -> None:
    """The second approval: add the principal with its holder's token, or suspend it."""
    if p["change"] == "add":
        add(a.uow, name=p["principal"], roles=p["roles"], team=p["team"], attributes=p["attributes"],
            created_by=p["proposer"], token_id=p["token_id"], token_hash=p["token_hash"])
    else:
        target = repo.principal_by_name(a.uow, p["principal"])
        if not target.suspended:
            repo.suspend_principal(a.uow, target.name)
    ids.set_state(a.uow, p["id"], "applied")


def add(uow: UnitOfWork, *, name: str, roles: list[str], team: str | None, attributes: dict[str, str],
        created_by: str | None, token_id: str | None = None, token_hash: str | None = None
        ) -> tuple[str | None, Principal]:
    """Store a new principal: (its token, the principal). The token is made here unless its holder
    made it (then only its id and hash are known, and None is returned); stored only hashed."""
    new_token = None
    if token_id is None:
        new_token, token_id, token_hash = tokens.mint()
    elif repo.principal_by_token_id(uow, token_id) is not None or ids.token_pending(uow, token_id, name):
        raise InvalidInput("that token is someone else's already: make a new one (`custody principal new-token`)")
    principal = Principal(id=new_id(), name=name, roles=tuple(roles), team=team, attributes=attributes,
                          created_by=created_by)
    repo.add_principal(uow, principal, token_id, token_hash)
    return new_token, repo.principal_by_name(uow, name)


def withdraw(ws: Workspace, token: str | None, proposal_id: str, reason: str | None = None) -> dict:
    """End an open identity proposal without effect (its proposer only: the principal it names could
    otherwise end their own suspension)."""
    with act(ws, token, "principal.withdraw", subject=proposal_id, rationale=reason) as a:
        p = ids.by_id(a.uow, proposal_id, lock=True)
        if p["state"] != "proposed":
            raise InvalidState(f"identity proposal {proposal_id} is {p['state']}")
        if p["proposer"] != a.principal.name:
            raise Denied(f"only {p['proposer']}, who proposed it, withdraws identity proposal {proposal_id}")
        ids.set_state(a.uow, proposal_id, "withdrawn")
        a.record(details={"principal": p["principal"], "change": p["change"]})
        return view(ws, a.uow, ids.by_id(a.uow, proposal_id))


def list_proposals(ws: Workspace, token: str | None, open_only: bool = False) -> list[dict]:
    with act(ws, token, "principal.read", details={"what": "identity proposals"}) as a:
        return [view(ws, a.uow, p) for p in ids.listed(a.uow, "proposed" if open_only else None)]
