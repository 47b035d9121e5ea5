"""Which service may call which internal endpoint (``spec/platform.md`` §10.1).

Compiled into the measured code on purpose: a host that could edit these rules
could let any service reach storage. Kettle adds ``authentication -> storage``
because, unlike Teaclave, it keeps its user database in the storage service
(the storage service partitions keys by caller, so authentication's records are
invisible to the others).
"""

from __future__ import annotations

INBOUND: dict[str, frozenset[str]] = {
    "access_control": frozenset({"frontend", "management"}),
    "authentication": frozenset({"frontend"}),
    "storage": frozenset({"management", "scheduler", "authentication"}),
    "management": frozenset({"frontend"}),
    "scheduler": frozenset({"execution"}),
}


def allowed_callers(service: str) -> frozenset[str]:
    return INBOUND.get(service, frozenset())
