"""Parsing and redacting PostgreSQL connection strings so secrets never leak."""

from __future__ import annotations

import re

from psycopg.conninfo import conninfo_to_dict

__all__ = ["describe_dsn", "redact_dsn", "scrub_dsn_password", "scrub_secret"]

_URI_PASSWORD = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@\s]*:)(?P<pw>[^@\s]*)(?=@)", re.I)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.I)


def _password(dsn: str) -> str | None:
    try:
        value = conninfo_to_dict(dsn).get("password")
    except Exception:
        return None
    return str(value) if value else None


def _passwords(dsn: str) -> list[str]:
    """Every spelling of the password a message could quote: as parsed, and as written
    (percent-encoded in a URI, quoted in key/value form). The written forms are found
    even when the DSN does not parse, since a driver's parse error may quote it whole."""
    found = {_password(dsn) or ""}
    for match in (*_URI_PASSWORD.finditer(dsn), *_KV_PASSWORD.finditer(dsn)):
        written = match.group("pw")
        found.update({written, written.strip("'")})
    # Longest first, so a password is never half-replaced by a shorter one inside it.
    return sorted((p for p in found if p), key=len, reverse=True)


def redact_dsn(dsn: str) -> str:
    """Return ``dsn`` with its password replaced by ``***``.

    Args:
        dsn: A libpq key/value string or a ``postgresql://`` URI.

    Returns:
        The same connection string, safe to print.
    """
    redacted = _URI_PASSWORD.sub(lambda m: m.group("head") + "***", dsn)
    redacted = _KV_PASSWORD.sub(lambda m: m.group("head") + "***", redacted)
    return scrub_dsn_password(redacted, dsn)


def describe_dsn(dsn: str) -> str:
    """Describe the server a DSN points at as ``host:port/dbname`` (no user, no password)."""
    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "<unparsable DSN>"
    host = str(parts.get("host") or parts.get("hostaddr") or "localhost")
    port = str(parts.get("port") or "5432")
    dbname = str(parts.get("dbname") or parts.get("user") or "postgres")
    return f"{host}:{port}/{dbname}"


def scrub_secret(text: str, secret: str | None) -> str:
    """Replace every occurrence of ``secret`` in ``text`` with ``***``."""
    if not secret:
        return text
    return text.replace(secret, "***")


def scrub_dsn_password(text: str, dsn: str | None) -> str:
    """Remove the password of ``dsn`` from an arbitrary message (e.g. a driver error)."""
    if not dsn:
        return text
    for password in _passwords(dsn):
        text = scrub_secret(text, password)
    return text
