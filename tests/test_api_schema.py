"""A bounded schemathesis run against /openapi.json of a real server: generated requests to every
operation, no 500s, every response (errors included) as the schema documents it.

It acts as a researcher (writes reach validation, policy and the ledger; nothing is destroyed) and
reads every GET as the admin; CUSTODY_SERVER_PATHS is unset, so no generated path reaches the disk.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import Env, cli, serving

EXAMPLES = 8  # per operation: bounded, a couple of minutes in all
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from conftest import PASSPHRASE, hf_model
    from custody.control.services import setup

    root = tmp_path_factory.mktemp("schema")
    home = root / "ws"
    init = setup.init_workspace(home, passphrase=PASSPHRASE, scrypt_log_n=14)
    env = Env(home=home, token=init.admin_token, backend="sqlite")
    model = root / "m"
    hf_model(model)
    mp = pytest.MonkeyPatch()
    mp.setenv("CUSTODY_HOME", str(home))
    mp.setenv("CUSTODY_PASSPHRASE", PASSPHRASE)
    assert cli("asset", "register", "tiny", str(model), token=env.token).code == 0
    researcher = cli("principal", "add", "rita", "--role", "researcher", "--team", "nlp", "--json", token=env.token).json
    mp.undo()
    with serving(env) as base:
        yield base, env.token, researcher["token"]


@pytest.fixture(scope="module")
def api_schema(live):  # noqa: ANN001, ANN201
    base, _, _ = live
    return schemathesis.openapi.from_url(f"{base}/openapi.json")


def test_every_operation_answers_as_documented(api_schema, live) -> None:  # noqa: ANN001
    base, admin, researcher = live
    ran = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        token = admin if operation.method.upper() == "GET" else researcher

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        @given(case=operation.as_strategy())
        def exercise(case) -> None:  # noqa: ANN001
            case.call_and_validate(base_url=base, headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)

        exercise()
        ran.append(operation.label)
    assert len(ran) >= 60


def test_the_schema_documents_every_operation_and_its_errors(api_schema) -> None:  # noqa: ANN001
    from custody.api.operations import OPERATIONS

    raw = api_schema.raw_schema
    for op in OPERATIONS:
        entry = raw["paths"][op.path][op.method.lower()]
        assert {"401", "403", "404", "422"} <= set(entry["responses"]), op.name
    assert Path(__file__).name  # the module ran against a live server (see fixture)
