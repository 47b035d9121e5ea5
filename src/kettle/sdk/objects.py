"""Functions and tasks as objects: a handle that remembers its id and its client.

The frontend API is a flat list of calls that all take an id; most programs
think in terms of "this task": create it, invoke it, wait for it, read its
result. These handles are that view. They hold no state the platform does not
have (apart from the last :class:`TaskInfo` seen, for display), so any number
of them may point at the same object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .frontend import outputs_after_wait

if TYPE_CHECKING:
    from .frontend import (
        Assignment,
        AsyncFrontendClient,
        FrontendClient,
        FunctionInfo,
        FunctionUsage,
        Ownership,
        TaskInfo,
        TaskOutputs,
    )


class Function:
    """A registered function, through a :class:`FrontendClient`."""

    __slots__ = ("client", "id")

    def __init__(self, client: FrontendClient, function_id: str) -> None:
        self.client = client
        self.id = function_id

    def __repr__(self) -> str:
        return f"Function({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Function) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("function", self.id))

    def info(self) -> FunctionInfo:
        return self.client.get_function(self.id)

    def usage(self) -> FunctionUsage:
        return self.client.get_function_usage_stats(self.id)

    def create_task(
        self,
        arguments: Mapping[str, Any] | str | None = None,
        executor: str = "builtin",
        inputs_ownership: Ownership = (),
        outputs_ownership: Ownership = (),
    ) -> Task:
        task_id = self.client.create_task(self.id, arguments, executor, inputs_ownership, outputs_ownership)
        return Task(self.client, task_id)

    def update(self, **changes: Any) -> None:
        """Change only the given fields (``name=``, ``public=``, ``usage_quota=`` ...),
        keeping the others -- UpdateFunction itself replaces everything."""
        self.client._update_function_fields(self.id, changes)

    def disable(self) -> None:
        self.client.disable_function(self.id)

    def delete(self) -> None:
        self.client.delete_function(self.id)


class Task:
    """A task, through a :class:`FrontendClient`; ``last`` is the state last seen."""

    __slots__ = ("client", "id", "last")

    def __init__(self, client: FrontendClient, task_id: str) -> None:
        self.client = client
        self.id = task_id
        self.last: TaskInfo | None = None

    def __repr__(self) -> str:
        status = f", {self.last.status.name}" if self.last else ""
        return f"Task({self.id!r}{status})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("task", self.id))

    def refresh(self) -> TaskInfo:
        self.last = self.client.get_task(self.id)
        return self.last

    def wait(self, timeout: float | None = None) -> TaskInfo:
        """The task once it ends, or its state when ``timeout`` seconds have passed
        (no exception either way: look at ``.status`` / ``.result``)."""
        self.last = self.client.wait_task(self.id, timeout)
        return self.last

    def outputs(self, timeout: float | None = None) -> TaskOutputs:
        """Return value, output cmacs and log of a successful run (raises like :meth:`result`)."""
        return outputs_after_wait(self.wait(timeout), timeout)

    def result(self, timeout: float | None = None) -> bytes:
        """The return value; TaskCanceled / TaskFailed with the reason, or
        TaskWaitTimeout when ``timeout`` passes first."""
        return self.outputs(timeout).return_value

    def assign(self, inputs: Assignment = (), outputs: Assignment = ()) -> None:
        self.client.assign_data(self.id, inputs, outputs)

    def approve(self, expect_digest: str | None = None, expires_in: int | None = None) -> None:
        self.client.approve_task(self.id, expect_digest, expires_in)

    def revoke(self) -> None:
        self.client.revoke_approval(self.id)

    def refuse(self, reason: str = "") -> None:
        self.client.refuse_task(self.id, reason)

    def invoke(self) -> None:
        self.client.invoke_task(self.id)

    def cancel(self) -> None:
        self.client.cancel_task(self.id)


class AsyncFunction:
    """A registered function, through an :class:`AsyncFrontendClient`."""

    __slots__ = ("client", "id")

    def __init__(self, client: AsyncFrontendClient, function_id: str) -> None:
        self.client = client
        self.id = function_id

    def __repr__(self) -> str:
        return f"AsyncFunction({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncFunction) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("function", self.id))

    async def info(self) -> FunctionInfo:
        return await self.client.get_function(self.id)

    async def usage(self) -> FunctionUsage:
        return await self.client.get_function_usage_stats(self.id)

    async def create_task(
        self,
        arguments: Mapping[str, Any] | str | None = None,
        executor: str = "builtin",
        inputs_ownership: Ownership = (),
        outputs_ownership: Ownership = (),
    ) -> AsyncTask:
        task_id = await self.client.create_task(self.id, arguments, executor, inputs_ownership, outputs_ownership)
        return AsyncTask(self.client, task_id)

    async def update(self, **changes: Any) -> None:
        await self.client._update_function_fields(self.id, changes)

    async def disable(self) -> None:
        await self.client.disable_function(self.id)

    async def delete(self) -> None:
        await self.client.delete_function(self.id)


class AsyncTask:
    """A task, through an :class:`AsyncFrontendClient`; ``last`` is the state last seen."""

    __slots__ = ("client", "id", "last")

    def __init__(self, client: AsyncFrontendClient, task_id: str) -> None:
        self.client = client
        self.id = task_id
        self.last: TaskInfo | None = None

    def __repr__(self) -> str:
        status = f", {self.last.status.name}" if self.last else ""
        return f"AsyncTask({self.id!r}{status})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncTask) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("task", self.id))

    async def refresh(self) -> TaskInfo:
        self.last = await self.client.get_task(self.id)
        return self.last

    async def wait(self, timeout: float | None = None) -> TaskInfo:
        self.last = await self.client.wait_task(self.id, timeout)
        return self.last

    async def outputs(self, timeout: float | None = None) -> TaskOutputs:
        return outputs_after_wait(await self.wait(timeout), timeout)

    async def result(self, timeout: float | None = None) -> bytes:
        return (await self.outputs(timeout)).return_value

    async def assign(self, inputs: Assignment = (), outputs: Assignment = ()) -> None:
        await self.client.assign_data(self.id, inputs, outputs)

    async def approve(self, expect_digest: str | None = None, expires_in: int | None = None) -> None:
        await self.client.approve_task(self.id, expect_digest, expires_in)

    async def revoke(self) -> None:
        await self.client.revoke_approval(self.id)

    async def refuse(self, reason: str = "") -> None:
        await self.client.refuse_task(self.id, reason)

    async def invoke(self) -> None:
        await self.client.invoke_task(self.id)

    async def cancel(self) -> None:
        await self.client.cancel_task(self.id)
