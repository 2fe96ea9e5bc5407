"""The ``rlft`` command line, by audience: :mod:`~rlft.cli.stack` runs the processes (up, serve, worker),
:mod:`~rlft.cli.admin` is the operator's (migrate, keys), :mod:`~rlft.cli.jobs` drives jobs over REST, and
:mod:`~rlft.cli.common` holds what they share (settings, the API key and client, the consoles).

Configuration comes from flags, then the environment (``RLFT_API_URL``, ``RLFT_API_KEY``), then the dev
key that ``rlft up`` writes under the data directory. Exit codes: 0 ok, 1 failure, 2 usage. An expected
error is one line that says what to do, never a traceback.
"""

from __future__ import annotations

import argparse
import os

from rlft import client as api
from rlft.cli.admin import add_admin_commands
from rlft.cli.common import CLIError, err, explain
from rlft.cli.jobs import add_job_commands
from rlft.cli.models import add_models_commands
from rlft.cli.stack import add_stack_commands

__all__ = ["CLIError", "main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlft", description="RL fine-tuning of language models, as a service.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--api-url", help="the API (default: $RLFT_API_URL or http://127.0.0.1:8000)")
    conn.add_argument("--api-key", help="a tenant key (default: $RLFT_API_KEY)")
    add_stack_commands(sub)
    add_admin_commands(sub)
    add_job_commands(sub, conn)
    add_models_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        err.print(f"error: {exc}", markup=False)
        return 1
    except api.APIError as exc:
        url = getattr(args, "api_url", None) or os.environ.get("RLFT_API_URL") or api.DEFAULT_URL
        err.print(f"error: {explain(exc, url)}", markup=False)
        return 1
    except KeyboardInterrupt:
        return 130
