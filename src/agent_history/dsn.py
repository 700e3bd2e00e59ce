"""Parsing and redacting PostgreSQL connection strings so secrets never leak.

Everything here parses with psycopg's ``conninfo`` (libpq's own parser). The secret
parameters are ``password`` and ``sslpassword`` (the passphrase of the client key); they
are never printed. ``sslkey``, ``sslcert``, ``sslrootcert``, ``sslcrl`` and ``passfile`` hold
file paths, not secrets, and are shown. A DSN that does not parse is a configuration
error whose message says what is wrong without quoting any part of the DSN.
"""

from __future__ import annotations

import re

from psycopg import Error as PsycopgError
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agent_history.errors import ConfigError

__all__ = [
    "DSN_VARIABLE",
    "SECRET_PARAMETERS",
    "describe_dsn",
    "parse_dsn",
    "redact_dsn",
    "scrub_dsn_password",
    "scrub_secret",
    "validate_dsn",
]

DSN_VARIABLE = "ORCHEO_POSTGRES_DSN"
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
UNPARSABLE = "<unparsable DSN>"

_URI_PASSWORD = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@\s]*:)(?P<pw>[^@\s]*)(?=@)", re.I)
_KV_PASSWORD = re.compile(r"(?P<head>\b(?:ssl)?password\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.I)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:ssl)?password=)(?P<pw>[^&#\s]*)", re.I)

# libpq's parse errors quote the DSN (or the part around the problem): each is told here in
# fixed words instead.
_PARSE_PROBLEMS: tuple[tuple[str, str], ...] = (
    ('missing "=" after', "is neither a postgresql:// URI nor key=value pairs (a '=' is missing)"),
    ("unexpected spaces found", "has a space inside a URI part (write it as %20)"),
    ("unterminated quoted string", "has an unterminated quoted value"),
    ("invalid connection option", "names an unknown connection parameter"),
    ("invalid uri query parameter", "names an unknown URI query parameter"),
    ("invalid percent-encoded token", "has an invalid %-escape"),
    ("forbidden value %00", "has a %00 escape"),
    ('looking for matching "]"', "has an IPv6 host without its closing ']'"),
    ("ipv6 host address may not be empty", "has an empty IPv6 host"),
    ("unexpected character", "has an unexpected character in its URI"),
    ("extra key/value separator", "has an extra '=' in a URI query parameter"),
    ("missing key/value separator", "has a URI query parameter without '='"),
)


def _problem(message: str) -> str:
    lowered = message.lower()
    for marker, problem in _PARSE_PROBLEMS:
        if marker in lowered:
            return problem
    return "does not parse as a libpq connection string or a postgresql:// URI"


def parse_dsn(dsn: str, variable: str = DSN_VARIABLE) -> dict[str, str]:
    """Parse a DSN with libpq's rules (via psycopg).

    Args:
        dsn: A libpq key/value string or a ``postgresql://`` URI.
        variable: The setting named by the error.

    Returns:
        The connection parameters it sets.

    Raises:
        ConfigError: the DSN does not parse; the message names ``variable`` and the
            problem, never any part of the DSN.
    """
    try:
        parts = conninfo_to_dict(dsn)
    except PsycopgError as exc:
        raise ConfigError(variable, _problem(str(exc))) from None
    return {name: str(value) for name, value in parts.items() if value is not None}


# Parameters whose values libpq checks only when it connects (a bad one would then be
# reported as an unreachable server): the values every supported libpq accepts.
_CHOICES: dict[str, frozenset[str]] = {
    "sslmode": frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}),
    "gssencmode": frozenset({"disable", "prefer", "require"}),
    "channel_binding": frozenset({"disable", "prefer", "require"}),
    "target_session_attrs": frozenset(
        {"any", "read-write", "read-only", "primary", "standby", "prefer-standby"}
    ),
}


def validate_dsn(dsn: str, variable: str = DSN_VARIABLE) -> dict[str, str]:
    """`parse_dsn`, then the values libpq would only refuse when connecting: the port (a
    number from 1 to 65535, one per host) and the modes (``sslmode``, ``gssencmode``,
    ``channel_binding``, ``target_session_attrs``).

    Raises:
        ConfigError: the DSN does not parse, or a value is not one libpq accepts; the
            message names ``variable``, the parameter and what it accepts, never a value.
    """
    parts = parse_dsn(dsn, variable)
    for name, choices in _CHOICES.items():
        if name in parts and parts[name] not in choices:
            allowed = ", ".join(sorted(choices))
            raise ConfigError(variable, f"{name} must be one of {allowed}")
    if _split_password(dsn) or any(_password_tail(h) for h in parts.get("host", "").split(",")):
        raise ConfigError(
            variable,
            "holds an '@' that is not the one before the host: "
            "write an '@' of a URI's password as %40",
        )
    for written in parts.get("port", "").split(","):
        port = written.strip()  # libpq allows spaces around each port
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(variable, "port must be a number from 1 to 65535 (one per host)")
    return parts


def redact_dsn(dsn: str) -> str:
    """Return ``dsn`` as key/value pairs with every secret parameter shown as ``***``.

    Args:
        dsn: A libpq key/value string or a ``postgresql://`` URI.

    Returns:
        The connection string, rebuilt from its parsed parameters, safe to print; a DSN
        that does not parse gives ``<unparsable DSN>``.
    """
    try:
        parts = parse_dsn(dsn)
    except ConfigError:
        return UNPARSABLE
    if _split_password(dsn):
        return UNPARSABLE
    shown = {k: ("***" if k in SECRET_PARAMETERS else v) for k, v in parts.items()}
    if "host" in shown:
        shown["host"] = _shown_host(shown["host"])
    return make_conninfo("", **shown)


def describe_dsn(dsn: str) -> str:
    """Describe the server a DSN points at as ``host:port/dbname`` (no user, no password)."""
    try:
        parts = parse_dsn(dsn)
    except ConfigError:
        return UNPARSABLE
    if _split_password(dsn):
        return UNPARSABLE
    host = _shown_host(str(parts.get("host") or parts.get("hostaddr") or "localhost"))
    port = str(parts.get("port") or "5432")
    dbname = str(parts.get("dbname") or parts.get("user") or "postgres")
    return f"{host}:{port}/{dbname}"


def _split_password(dsn: str) -> bool:
    """Whether a URI holds more than one '@' before its query: an '@' of its password
    (or user) not written as %40, after which libpq takes the rest of the password for
    the host, the port or the database, which messages naming the server show."""
    scheme, sep, rest = dsn.strip().partition("://")
    if not sep or scheme.lower() not in ("postgres", "postgresql"):
        return False
    return rest.partition("?")[0].count("@") > 1


def _password_tail(host: str) -> bool:
    """Whether ``host`` holds an '@' that no host name, socket directory (``/...``) or
    abstract socket (``@...``) has: a URI whose password holds an '@' not written as %40
    (libpq split it at the first one, so the rest of the password became the host)."""
    return "@" in host and not host.startswith(("/", "@"))


def _shown_host(host: str) -> str:
    """``host`` without the password tail (`_password_tail`) of each of its hosts
    (`validate_dsn` refuses such a DSN; this keeps one that never went through it from
    showing the secret)."""
    names = host.split(",")
    return ",".join(n.rpartition("@")[2] if _password_tail(n) else n for n in names)


def scrub_secret(text: str, secret: str | None) -> str:
    """Replace every occurrence of ``secret`` in ``text`` with ``***``."""
    if not secret:
        return text
    return text.replace(secret, "***")


def _secrets(dsn: str) -> list[str]:
    """Every spelling of a secret a message could quote: as parsed, and as written
    (percent-encoded in a URI, quoted in key/value form). The written forms are found
    even when the DSN does not parse, since a driver's parse error may quote it whole."""
    found: set[str] = set()
    try:
        parts = conninfo_to_dict(dsn)
    except PsycopgError:
        parts = {}
    found.update(str(parts[name]) for name in SECRET_PARAMETERS if parts.get(name))
    for pattern in (_URI_PASSWORD, _KV_PASSWORD, _QUERY_PASSWORD):
        for match in pattern.finditer(dsn):
            written = match.group("pw")
            found.update({written, written.strip("'")})
    # Longest first, so a secret is never half-replaced by a shorter one inside it.
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub_dsn_password(text: str, dsn: str | None) -> str:
    """Remove the secrets of ``dsn`` (password, sslpassword) from an arbitrary message."""
    if not dsn:
        return text
    for secret in _secrets(dsn):
        text = scrub_secret(text, secret)
    return text
