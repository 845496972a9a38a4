"""The policy catalog: Cedar policies and schema, the approval-rule table, and the catalog's tests.

`Catalog.load(folder)` parses a catalog once; `decide_copy`, `decide_read` and `decide_approval` answer from
the parsed handles. The default catalog ships in `default/` and is copied into each workspace.
"""

from custody.control.policy.cases import CaseResult
from custody.control.policy.catalog import Catalog, PolicyInfo
from custody.control.policy.context import (ApproveFacts, AssetFacts, CopyFacts, PrincipalFacts, ReadFacts, RegisterFacts,
                                            ZoneFacts)
from custody.control.policy.durations import format_duration, parse_duration
from custody.control.policy.errors import PolicyError

__all__ = ["ApproveFacts", "AssetFacts", "CaseResult", "Catalog", "CopyFacts", "PolicyError", "PolicyInfo",
           "PrincipalFacts", "ReadFacts", "RegisterFacts", "ZoneFacts", "format_duration", "parse_duration"]
