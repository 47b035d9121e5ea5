"""``builtin-echo`` (``spec/functions.md`` §5.3): returns its message, and logs it.

The reference logs the message only in its test build; Kettle always logs it
(§4.5 Kettle choice), and the line reaches the task only with ``save_log``.
"""

from __future__ import annotations

from typing import Any

from . import BuiltinFunction, FunctionRuntime, function_logger
from .arguments import STRING

log = function_logger("echo")


def echo(arguments: dict[str, Any], runtime: FunctionRuntime) -> str:
    message: str = arguments["message"]
    log.info("%s", message)
    return message


FUNCTION = BuiltinFunction(
    name="builtin-echo",
    run=echo,
    arguments={"message": STRING},
    description="Returns the message argument unchanged.",
)
