"""``kettle storage``: the storage service's database, for operators on its host.

- ``dead-letters``: the queue items the storage service could not deliver. An item
  that fails to unseal (tampered with, or sealed under another key) is moved out of
  its queue, so the queue keeps flowing, and kept with the reason. Read-only,
  beside the running service.
- ``migrate --from sqlite --to postgresql``: move a stopped platform's state from its
  SQLite file into an empty PostgreSQL database (the DSN as ``[storage]`` and
  ``KETTLE_STORAGE_DSN`` give it). Every row is copied exactly as stored: values
  stay sealed (nothing is unsealed outside the storage service, nor at all), queue
  items keep their ids, deliveries and leases.
"""

from __future__ import annotations

import datetime

import typer
from rich.markup import escape
from rich.table import Table

# Defined before importing from .main: main adds this app at its end.
app = typer.Typer(no_args_is_help=True, help="The storage service's database, for operators on its host.")

from .main import one_line_errors, out  # noqa: E402


@app.command("dead-letters")
@one_line_errors
def dead_letters(as_json: bool = typer.Option(False, "--json")) -> None:
    """List queue items moved out of their queue because they could not be delivered, with the reason."""
    from ..config import load_config
    from ..services.storage.service import open_backend
    from ..services.storage.sqlite_backend import read_dead_letters

    config = load_config()
    if config.storage.backend == "sqlite":
        letters = read_dead_letters(config.path(config.storage.path))
    else:
        backend = open_backend(config)
        try:
            letters = backend.dead_letters()
        finally:
            backend.close()
    rows = [
        {
            "item_id": letter.item_id,
            "namespace": letter.namespace,
            "queue": letter.queue.decode("utf-8", errors="replace"),
            "deliveries": letter.deliveries,
            "moved_at": datetime.datetime.fromtimestamp(letter.moved_at, datetime.UTC).isoformat(),
            "reason": letter.reason,
            "value_bytes": len(letter.value),
        }
        for letter in letters
    ]
    if as_json:
        out.print_json(data=rows)
        return
    if not rows:
        out.print("no dead letters")
        return
    table = Table(show_header=True)
    for column in ("item", "namespace", "queue", "deliveries", "moved at (UTC)", "reason"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["item_id"]), escape(str(row["namespace"])), escape(str(row["queue"])),
                      str(row["deliveries"]), str(row["moved_at"]), escape(str(row["reason"])))
    out.print(table)


@app.command("migrate")
@one_line_errors
def migrate(
    source: str = typer.Option(..., "--from", help="the backend the state is in now: sqlite"),
    target: str = typer.Option(..., "--to", help="the backend to move it to: postgresql"),
) -> None:
    """Copy a stopped platform's state from its SQLite file into an empty PostgreSQL database.

    Then set ``[storage] backend = "postgresql"`` and start the platform again. The
    SQLite file is left as it was."""
    from ..config import load_config
    from ..errors import ConfigError
    from ..services.storage.postgresql_backend import PostgreSQLBackend
    from ..services.storage.service import postgresql_dsn
    from ..services.storage.sqlite_backend import read_state

    if (source, target) != ("sqlite", "postgresql"):
        raise ConfigError(f"only --from sqlite --to postgresql is supported, not --from {source} --to {target}")
    config = load_config()
    path = config.path(config.storage.path)
    destination = PostgreSQLBackend(postgresql_dsn(config))
    try:
        with read_state(path) as (records, items, letters):
            counted = destination.import_state(records, items, letters)
    finally:
        destination.close()
    out.print(escape(f"moved {counted[0]} records, {counted[1]} queue items and {counted[2]} dead letters from "
                     f'{path} to PostgreSQL; now set [storage] backend = "postgresql"'))
