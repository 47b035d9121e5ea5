"""The frontend's authorisation policy, as the casbin model and policy of Teaclave (``spec/platform.md`` §3.1).

The model and policy are kept as text constants here rather than as package
data files ``model.conf``/``policy.csv``: the measurement covers only ``.py``
files (``attestation/measurement.py``), so a data file beside the package could
be edited by the host to grant rights without changing MRENCLAVE. Constants are
measured, and need no package-data declaration to ship in the wheel.

The decision is casbin's, on the same model as the reference, with one guard in
front of it: only the four role *categories* are evaluated. casbin's role
manager treats every name as a member of itself, so without the guard a caller
sending the rule-group name ``rule_data_owner`` as its role would be granted
that group's actions; the spec says anything that is not a category has no
rights.
"""

from __future__ import annotations

import casbin
from casbin.persist.adapters import StringAdapter
from casbin.util.log import disabled_logging

PLATFORM_ADMIN = "PlatformAdmin"
FUNCTION_OWNER = "FunctionOwner"
DATA_OWNER_MANAGER = "DataOwnerManager"
DATA_OWNER = "DataOwner"

ROLE_CATEGORIES: frozenset[str] = frozenset({PLATFORM_ADMIN, FUNCTION_OWNER, DATA_OWNER_MANAGER, DATA_OWNER})
"""The only subjects with any rights (case-sensitive, no attribute suffix)."""

MODEL_CONF = """\
[request_definition]
r = sub, act

[policy_definition]
p = sub, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub) && r.act == p.act || r.sub == "PlatformAdmin"
"""
"""casbin model: (subject, action) requests and policies, one role grouping, PlatformAdmin may do anything."""

FUNCTION_OWNER_ACTIONS: tuple[str, ...] = (
    "register_function",
    "update_function",
    "delete_function",
    "disable_function",
    "get_function",
    "list_functions",
    "get_function_usage_stats",
)

DATA_OWNER_ACTIONS: tuple[str, ...] = (
    "register_input_file",
    "register_output_file",
    "update_input_file",
    "update_output_file",
    "register_fusion_output",
    "register_input_from_output",
    "get_output_file",
    "get_input_file",
    "create_task",
    "get_task",
    "assign_data",
    "approve_task",
    "invoke_task",
    "cancel_task",
    "get_function",
    "list_functions",
    "get_function_usage_stats",
)


def _policy_csv() -> str:
    lines = [f"p, rule_function_owner, {action}" for action in FUNCTION_OWNER_ACTIONS]
    lines += [f"p, rule_data_owner, {action}" for action in DATA_OWNER_ACTIONS]
    lines += [
        f"g, {FUNCTION_OWNER}, rule_function_owner",
        f"g, {DATA_OWNER_MANAGER}, rule_data_owner",
        f"g, {DATA_OWNER}, rule_data_owner",
    ]
    return "\n".join(lines) + "\n"


POLICY_CSV: str = _policy_csv()
"""casbin policy (policy.csv content): the two rule groups and which categories belong to them."""


class AccessPolicy:
    """Decides whether a role category may call a frontend API (by its §1.4 policy name).

    Pure and synchronous: no I/O after construction, so the service can call it on
    its event loop and tests can use it directly.
    """

    MAX_CACHED_DECISIONS = 4096
    """Decisions are memoised (the policy never changes after construction; a casbin
    evaluation costs a few hundred microseconds on the frontend's hot path). The
    bound keeps a caller sending endless distinct api names from growing memory."""

    def __init__(self, model_conf: str = MODEL_CONF, policy_csv: str = POLICY_CSV) -> None:
        # casbin silences its loggers only after it has dumped the whole model and
        # policy at INFO (and it would log every denial as a WARNING): silence them first.
        disabled_logging()
        model = casbin.Enforcer.new_model(text=model_conf)
        self._enforcer = casbin.Enforcer(model, StringAdapter(policy_csv))
        self._decisions: dict[tuple[str, str], bool] = {}

    def allows(self, role_category: str, api: str) -> bool:
        """True if ``role_category`` may perform ``api``.

        A full role string such as ``DataOwner-group`` is not a category and has no
        rights: the caller (the frontend) reduces role strings to categories (§3).
        Unknown api names match no policy, so only PlatformAdmin passes them.
        """
        if role_category not in ROLE_CATEGORIES:
            return False
        key = (role_category, api)
        decision = self._decisions.get(key)
        if decision is None:
            decision = bool(self._enforcer.enforce(role_category, api))
            if len(self._decisions) >= self.MAX_CACHED_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision
