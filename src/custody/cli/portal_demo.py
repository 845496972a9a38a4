"""The workspace `make run` serves: the demo people and model, and requests in every state.

Made once per folder (`custody serve --seed-demo`); the people's tokens and TOTP seeds are kept
beside it in demo-people.json (mode 0600) so a later run can print them again. Demo only: the
keyring's passphrase is stored in clear, as for `custody init --demo`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from custody.cli.demo import OFFICERS, PEOPLE, make_model, next_code, onboard
from custody.control.services import assets, audit, copies, mfa, requests, setup, zones
from custody.control.workspace import Workspace

PEOPLE_FILE = "demo-people.json"
SEEDERS = ("lena", "grace")  # approve the seeded requests, so bob's and carol's next codes stay unused
MFA_PEOPLE = ("bob", "carol") + SEEDERS


def seed(home: Path) -> dict:
    """Create the demo workspace at `home`; returns {"admin": token, "people": {name: {...}}}."""
    home = home.resolve()
    init = setup.init_workspace(home, passphrase=None, demo=True)
    ws = Workspace.open(home)
    try:
        admin = init.admin_token
        used: dict[str, int] = {}
        everyone = PEOPLE + (("grace", "security", "risk"),)
        tok, officer_secrets = onboard(ws, admin, everyone, used)
        people = {name: {"role": role, "team": team, "token": tok[name]} for name, role, team in OFFICERS + everyone}
        for name, secret in officer_secrets.items():
            people[name]["totp_secret"] = secret
        for who in MFA_PEOPLE:
            secret = mfa.enroll(ws, tok[who])["secret"]
            mfa.verify(ws, tok[who], next_code(secret, used, who))
            people[who]["totp_secret"] = secret
        with tempfile.TemporaryDirectory(prefix="custody-demo-model-") as scratch:
            model = Path(scratch) / "demo-llm"
            model.mkdir()
            make_model(model, shards=2)
            assets.register(ws, tok["lena"], "demo-llm", model,
                            assets.RegisterOptions(classification="confidential", jurisdictions=("US",)))
        zones.add_zone(ws, admin, name="eu-research", url=(home / "zones" / "eu-research").as_uri(), kind="research",
                       region="eu-central", jurisdiction="DE", security_level=4)

        def approved(purpose: str) -> str:
            r = requests.create(ws, tok["alice"], "demo-llm", to="research", kind="research", purpose=purpose, ttl="7d")
            for who in SEEDERS:
                requests.approve(ws, tok[who], r["id"], otp=next_code(people[who]["totp_secret"], used, who))
            return r["id"]

        copies.run(ws, tok["dave"], requests.create(ws, tok["dave"], "demo-llm", to="backup", kind="backup",
                                                    purpose="nightly backup")["id"])  # done
        copies.run(ws, tok["alice"], approved("evaluate layer-norm drift"))  # done
        approved("compare tokenizers")  # approved, not yet run
        requests.create(ws, tok["alice"], "demo-llm", to="research", kind="research",
                        purpose="fine-tuning ablation", ttl="3d")  # awaiting approval
        try:
            requests.create(ws, tok["alice"], "demo-llm", to="eu-research", kind="research", purpose="EU study",
                            ttl="7d")
        except requests.RequestDenied:
            pass  # denied: the asset may not leave the US
        copies.run(ws, tok["erin"], requests.create(ws, tok["erin"], "demo-llm", to="dr", kind="dr",
                                                    purpose="prod region is down", break_glass=True)["id"])
        audit.make_checkpoint(ws, admin)
    finally:
        ws.close()
    saved = {"admin": admin, "people": people}
    fd = os.open(home / PEOPLE_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(saved, fh, indent=2)
    return saved


def load(home: Path) -> dict | None:
    path = home / PEOPLE_FILE
    return json.loads(path.read_text()) if path.exists() else None
