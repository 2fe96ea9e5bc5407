"""``rlft migrate`` and ``rlft keys ...``: the operator's commands, through the service's admin functions."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from rich.table import Table

from rlft.cli.common import CLIError, err, out, settings

T = TypeVar("T")


def cmd_migrate(args: argparse.Namespace) -> int:
    from service import admin

    current = settings()
    _admin(lambda: admin.migrate(current))
    err.print(f"database at {admin.redact(current.database_url)} is up to date")
    return 0


def create_key(tenant: str) -> str:
    """A new API key for ``tenant`` (created if new), through the service's own key store."""
    from service import admin

    current = settings()
    return _admin(lambda: admin.create_key(current, tenant))


def cmd_keys_create(args: argparse.Namespace) -> int:
    key = create_key(args.tenant)
    if args.quiet:
        sys.stdout.write(key + "\n")  # exactly the key, never wrapped: scripts read it
    else:
        out.print(
            f"API key for tenant {args.tenant!r} (shown once, keep it):\n{key}\n\nexport RLFT_API_KEY={key}"
        )
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from service import admin

    current = settings()
    keys = _admin(lambda: admin.list_keys(current, args.tenant))
    if args.json:
        out.print_json(json.dumps([{**vars(k)} for k in keys], default=str))
        return 0
    table = Table(box=None)
    for column in ("id", "tenant", "prefix", "created", "revoked"):
        table.add_column(column)
    for k in keys:
        revoked = f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "-"
        table.add_row(k.id, k.tenant, k.prefix + "…", f"{k.created_at:%Y-%m-%d %H:%M}", revoked)
    out.print(table)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from service import admin

    current = settings()
    info = _admin(lambda: admin.revoke_key(current, args.key_id))
    err.print(f"key {info.id} ({info.prefix}…) of tenant {info.tenant!r} is revoked")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from service import admin

    current = settings()
    key, old = _admin(lambda: admin.rotate_key(current, args.key_id))
    if args.quiet:
        sys.stdout.write(key + "\n")
    else:
        out.print(
            f"new API key for tenant {old.tenant!r} (shown once, keep it); {old.id} is revoked:\n{key}\n\n"
            f"export RLFT_API_KEY={key}"
        )
    return 0


def _admin(work: Callable[[], T]) -> T:
    from service.admin import AdminError

    try:
        return work()
    except AdminError as exc:
        raise CLIError(str(exc)) from exc


def add_admin_commands(sub: Any) -> None:
    s = sub.add_parser("migrate", help="create or upgrade the database schema")
    s.set_defaults(func=cmd_migrate)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    s = keys.add_parser("create", help="create a key for a tenant (printed once)")
    s.add_argument("--tenant", required=True, help="tenant name (created if new)")
    s.add_argument("--quiet", "-q", action="store_true", help="print only the key")
    s.set_defaults(func=cmd_keys_create)
    s = keys.add_parser("list", help="keys with their ids, tenants and prefixes (never the keys)")
    s.add_argument("--tenant", help="only this tenant's keys")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_keys_list)
    s = keys.add_parser("revoke", help="revoke a key by id: it answers 401 from the next request on")
    s.add_argument("key_id", metavar="KEY_ID", help="the key's id (key_…), from `rlft keys list`")
    s.set_defaults(func=cmd_keys_revoke)
    s = keys.add_parser("rotate", help="a new key for the same tenant, and the old one revoked")
    s.add_argument("key_id", metavar="KEY_ID", help="the id of the key to replace")
    s.add_argument("--quiet", "-q", action="store_true", help="print only the new key")
    s.set_defaults(func=cmd_keys_rotate)
