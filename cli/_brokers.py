"""`taskbroker brokers list`: the brokers sharing a PostgreSQL database, their pools and
how old their leases are (read from the database itself, like `serve --db`)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from cli._errors import CliError

brokers_app = typer.Typer(help="The brokers sharing one PostgreSQL database.", no_args_is_help=True)

DB_ENV = "TASKBROKER_DB_PATH"


@brokers_app.command("list")
def brokers_list(
    db: Annotated[
        str,
        typer.Option(
            "--db",
            envvar=DB_ENV,
            show_envvar=True,
            metavar="URL",
            help="The database the brokers share: postgresql://user:password@host:port/db.",
        ),
    ],
    output: Annotated[
        str, typer.Option("--output", "-o", help="table or json.", metavar="FORMAT")
    ] = "table",
) -> None:
    """Each broker: its id, address, the pools it schedules with their lease epochs and
    how long it has held them, and when its own registration runs out."""
    rows = asyncio.run(_rows(db))
    if output == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    if output != "table":
        raise CliError(f"--output must be table or json, not {output!r}")
    if not rows:
        typer.echo("no broker is registered in this database")
        return
    typer.echo(f"{'BROKER':<28} {'ADDRESS':<22} {'EXPIRES IN':>10}  POOLS (epoch, held for)")
    for row in rows:
        pools = ", ".join(f"{p['pool']} ({p['epoch']}, {p['held_s']:.0f}s)" for p in row["pools"])
        expires = f"{row['expires_in_s']:.1f}s" if row["expires_in_s"] > 0 else "gone"
        typer.echo(f"{row['broker_id']:<28} {row['address']:<22} {expires:>10}  {pools or '-'}")


async def _rows(db: str) -> list[dict[str, Any]]:
    from broker.cluster.node import list_brokers
    from broker.errors import BrokerError
    from broker.storage.postgres import PostgresStore
    from broker.store_url import parse_store_url

    try:
        scheme, url = parse_store_url(db)
        if scheme not in ("postgresql", "postgres"):
            raise CliError("brokers share a PostgreSQL database: give --db postgresql://...")
        store = await PostgresStore.open(url)
    except BrokerError as exc:
        raise CliError(str(exc)) from None
    try:
        found = await list_brokers(store)
    finally:
        await store.close()
    return [
        {
            "broker_id": b.broker_id,
            "address": b.address,
            "expires_in_s": round(b.expires_at - b.now, 3),
            "pools": [
                {"pool": pool, "epoch": epoch, "held_s": round(b.now - since, 3)}
                for pool, epoch, since in b.pools
            ],
        }
        for b in found
    ]
