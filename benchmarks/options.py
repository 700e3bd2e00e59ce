"""The options every benchmark entry point takes: which backends, and which PostgreSQL.

The DSN can come from ``--postgres-dsn`` or from `DSN_ENV`, so its password need not
appear in the process list (``ps`` shows command lines to every user of the machine).
The library's own ``ORCHEO_POSTGRES_DSN`` is deliberately not read: an operator's shell
that has it set would otherwise point the benchmark at the application's database.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from benchmarks.backends import BACKENDS, dsn_problem

__all__ = ["DSN_ENV", "DSN_OPTION", "add_target_options", "target_problem"]

DSN_ENV = "AGENT_HISTORY_BENCH_POSTGRES_DSN"
DSN_OPTION = "--postgres-dsn"


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--backends`` and ``--postgres-dsn`` to ``parser``."""
    parser.add_argument(
        DSN_OPTION,
        default=None,
        help="benchmark in this database instead of starting a throwaway server (the run "
        "writes under a namespace of its own and removes it at the end); default: "
        f"${DSN_ENV}, which keeps the password out of the process list",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated subset of {','.join(BACKENDS)} (any case)",
    )


def target_problem(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> str | None:
    """Check and normalise the target options in place: ``args.backends`` becomes the
    chosen backends in their usual order, ``args.postgres_dsn`` the DSN to use (from the
    option, else from `DSN_ENV` unless it is blank) without surrounding blanks. Returns what is wrong, as
    one line naming the option or the variable and never quoting the DSN; None when
    all fit."""
    chosen = [b.strip().lower() for b in args.backends.split(",") if b.strip()]
    choices = f"choose from {', '.join(BACKENDS)}"
    if not chosen:
        return f"--backends: empty ({choices})"
    unknown = [b for b in dict.fromkeys(chosen) if b not in BACKENDS]
    if unknown:
        return f"--backends: unknown {', '.join(unknown)} ({choices})"
    args.backends = [b for b in BACKENDS if b in chosen]
    source = DSN_OPTION
    if args.postgres_dsn is None:
        env = os.environ if environ is None else environ
        if env.get(DSN_ENV, "").strip():  # set but blank: as unset
            args.postgres_dsn, source = env[DSN_ENV], DSN_ENV
    problem = dsn_problem(args.postgres_dsn, source)
    if problem:
        return problem
    if args.postgres_dsn is not None:
        args.postgres_dsn = args.postgres_dsn.strip()
    return None
