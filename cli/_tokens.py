"""`taskbroker tokens create|list|revoke` (admin) and `tokens whoami`: API tokens."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli._common import BrokerOption, OutputOption, connect
from cli._output import OutputFormat, print_json
from worker_sdk import DEFAULT_ADDRESS, TokenInfo

tokens_app = typer.Typer(
    help="API tokens: create (shown once), list and revoke them (admin).", no_args_is_help=True
)


def _token_dict(token: TokenInfo) -> dict[str, Any]:
    return {
        "name": token.name,
        "roles": list(token.roles),
        "pools": list(token.pools),
        "created_at": token.created_at.isoformat() if token.created_at else None,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
        "from_file": token.from_file,
    }


@tokens_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The token's name: the identity it gives.")],
    role: Annotated[
        list[str],
        typer.Option(
            "--role", "-r", help="submit, read, worker or admin; repeat for more than one."
        ),
    ],
    pool: Annotated[
        list[str] | None,
        typer.Option("--pool", "-p", help="Limit the token to this pool; repeat for more."),
    ] = None,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Create an API token and print its secret, which the broker does not keep: this is
    the only time it is shown."""
    with connect(broker) as client:
        token, secret = client.create_token(name, role, pool or ())
    if output is OutputFormat.JSON:
        print_json({**_token_dict(token), "secret": secret})
        return
    typer.echo(secret)
    typer.echo(
        f"token {token.name} ({', '.join(token.roles)}; pools: {', '.join(token.pools) or 'all'})"
        " created: the secret above is shown this once",
        err=True,
    )


@tokens_app.command("list")
def list_tokens(
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Every API token (never a secret), revoked ones too."""
    with connect(broker) as client:
        tokens = client.list_tokens()
    if output is OutputFormat.JSON:
        print_json([_token_dict(t) for t in tokens])
        return
    table = Table("NAME", "ROLES", "POOLS", "CREATED", "REVOKED", box=None)
    for t in tokens:
        table.add_row(
            t.name,
            ",".join(t.roles),
            ",".join(t.pools) or "all",
            "tokens file"
            if t.from_file
            else (f"{t.created_at:%Y-%m-%d %H:%M}" if t.created_at else "-"),
            f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "-",
        )
    Console().print(table)


@tokens_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Revoke an API token: refused from now on, and its open streams are ended."""
    with connect(broker) as client:
        token = client.revoke_token(name)
    if output is OutputFormat.JSON:
        print_json(_token_dict(token))
        return
    typer.echo(f"token {token.name} revoked")


@tokens_app.command("whoami")
def whoami(
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Who the broker takes this command line's credentials for."""
    with connect(broker) as client:
        me = client.whoami()
    if output is OutputFormat.JSON:
        print_json(
            {"identity": me.name, "roles": list(me.roles), "pools": list(me.pools), "kind": me.kind}
        )
        return
    typer.echo(
        f"{me.name or '(anonymous)'} ({me.kind}): roles {', '.join(me.roles)};"
        f" pools {', '.join(me.pools) or 'all'}"
    )
