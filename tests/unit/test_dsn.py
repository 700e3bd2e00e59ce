"""DSNs parsed and redacted with libpq's rules; error text reduced to what is safe to log."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

from agent_history.dsn import (
    describe_dsn,
    parse_dsn,
    redact_dsn,
    scrub_dsn_password,
    validate_dsn,
)
from agent_history.errors import ConfigError
from agent_history.redaction import safe_error_text

SECRET = "S3cr3t-Sentinel"


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (
            f"postgresql://app:{SECRET}@db:6543/chat?sslpassword={SECRET}x&sslmode=require",
            "user=app password=*** dbname=chat host=db port=6543 sslmode=require sslpassword=***",
        ),
        (
            f"host=db user=app password='{SECRET} with spaces' sslkey=/k.pem sslcert=/c.pem",
            "user=app password=*** host=db sslcert=/c.pem sslkey=/k.pem",
        ),
        ("postgresql:///chat", "dbname=chat"),
    ],
)
def test_redaction_parses_and_hides_every_secret_parameter(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown
    assert SECRET not in redact_dsn(dsn)


def test_unparsable_dsn_is_never_quoted() -> None:
    dsn = f"postgresql://u:{SECRET} x@h/db"
    assert redact_dsn(dsn) == "<unparsable DSN>"
    assert describe_dsn(dsn) == "<unparsable DSN>"
    with pytest.raises(ConfigError) as caught:
        parse_dsn(dsn)
    assert str(caught.value) == (
        "ORCHEO_POSTGRES_DSN: has a space inside a URI part (write it as %20)"
    )
    assert parse_dsn("host=h port=1") == {"host": "h", "port": "1"}


@pytest.mark.parametrize(
    ("tail", "problem"),
    [
        ("@db/x?sslmode=bogus", "sslmode must be one of allow, disable, prefer, require, "),
        ("@db/x?gssencmode=on", "gssencmode must be one of disable, prefer, require"),
        ("@db/x?channel_binding=yes", "channel_binding must be one of disable, prefer, require"),
        ("@db/x?target_session_attrs=master", "target_session_attrs must be one of any, "),
        ("@db:abc/x", "port must be a number from 1 to 65535 (one per host)"),
        ("@db:99999/x", "port must be a number from 1 to 65535 (one per host)"),
        ("@db:0/x", "port must be a number from 1 to 65535 (one per host)"),
        ("@a:5432,b:x5/x", "port must be a number from 1 to 65535 (one per host)"),
        ("@db:\u096b\u096a\u096f\u096c/x", "port must be a number from 1 to 65535 (one per host)"),
    ],
)
def test_a_value_libpq_refuses_only_when_connecting_is_a_configuration_error(
    tail: str, problem: str
) -> None:
    """Found when connecting, it would be reported as a server that cannot be reached (the
    CLI's exit 3, a retry loop in a deployment) instead of a setting to fix."""
    dsn = f"postgresql://app:{SECRET}{tail}"
    with pytest.raises(ConfigError) as caught:
        validate_dsn(dsn)
    assert str(caught.value).startswith(f"ORCHEO_POSTGRES_DSN: {problem}")
    assert SECRET not in str(caught.value)
    for value in ("bogus", "master", "abc", "99999", "\u096b\u096a\u096f\u096c"):
        assert value not in str(caught.value)


def test_an_at_sign_left_in_a_uri_password_is_refused_without_showing_the_password() -> None:
    """libpq splits a URI at the first '@': the rest of the password became the host,
    shown by every message that names the server (and by `describe`)."""
    dsn = f"postgresql://app:hunter@{SECRET}@127.0.0.1:5432/appdb"
    with pytest.raises(ConfigError) as caught:
        validate_dsn(dsn)
    assert str(caught.value) == (
        "ORCHEO_POSTGRES_DSN: holds an '@' that is not the one before the host: write an '@' of a URI's password as %40"
    )
    # A DSN that never went through the check still does not show it.
    assert describe_dsn(dsn) == redact_dsn(dsn) == "<unparsable DSN>"
    # The rest of the password may land in the database name or be a host list.
    for split in (
        f"postgresql://u:ab@{SECRET}cd/{SECRET}ef@127.0.0.1:5432/db",
        f"postgresql://u:ab@/{SECRET}xy@host/db",
        "postgresql://u:ab@@127.0.0.1/db",
        f"postgres://u:ab@{SECRET},{SECRET}x@h/db",
    ):
        with pytest.raises(ConfigError) as caught:
            validate_dsn(split)
        assert SECRET not in str(caught.value)
        assert SECRET not in describe_dsn(split) and SECRET not in redact_dsn(split)
    # An '@' in the query (a socket directory, a user name) is the query's.
    assert validate_dsn("postgresql://u@h/db?host=/run/pg@15")["host"] == "/run/pg@15"
    assert describe_dsn(f"host=a,x@{SECRET}@b port=1,2") == "a,b:1,2/postgres"
    encoded = f"postgresql://app:hunter%40{SECRET}@127.0.0.1:5432/appdb"
    assert validate_dsn(encoded)["password"] == f"hunter@{SECRET}"
    # A socket directory or an abstract socket may hold an '@'.
    for host in ("/run/pg@15", "@pgsock"):
        assert validate_dsn(f"host={host} dbname=x")["host"] == host
        assert describe_dsn(f"host={host} dbname=x") == f"{host}:5432/x"


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app@db/x?sslmode=verify-full&target_session_attrs=read-write",
        "postgresql://app@a:5432,b:5433/x?gssencmode=disable&channel_binding=require",
        "host=a,b port=5432, dbname=x connect_timeout=10 keepalives=1",
        "host=a,b port='5432, 5433' dbname=x connect_timeout=2.5",
        "host=a port=' 5432' connect_timeout=+5",
        "postgresql:///x?host=/var/run/postgresql",
    ],
)
def test_the_values_libpq_accepts_pass(dsn: str) -> None:
    assert validate_dsn(dsn) == parse_dsn(dsn)


def test_scrubbing_finds_the_ssl_passphrase_too() -> None:
    dsn = f"host=h password=pw-{SECRET} sslpassword=ssl-{SECRET}"
    text = f"failed: pw-{SECRET} and ssl-{SECRET}"
    assert scrub_dsn_password(text, dsn) == "failed: *** and ***"
    uri = f"postgresql://u@h/db?sslpassword=q-{SECRET}"
    assert scrub_dsn_password(f"quoted {uri}", uri) == "quoted postgresql://u@h/db?sslpassword=***"


class _Model(BaseModel):
    n: int


def test_structured_errors_keep_their_fixed_fields_only() -> None:
    with pytest.raises(json.JSONDecodeError) as decode:
        json.loads('{"text": "' + SECRET)
    assert safe_error_text(decode.value) == (
        "JSONDecodeError: Unterminated string starting at (line 1, column 10)"
    )
    with pytest.raises(ValidationError) as invalid:
        _Model(n=SECRET)  # type: ignore[arg-type]
    assert safe_error_text(invalid.value) == "ValidationError: 1 validation error(s): int_parsing"
    missing = FileNotFoundError(2, "No such file or directory", f"/flags/{SECRET}.json")
    assert safe_error_text(missing) == "FileNotFoundError: ENOENT No such file or directory"
    assert safe_error_text(KeyError(SECRET)) == "KeyError"
    assert safe_error_text(RuntimeError(f"database is locked ({SECRET})")) == (
        "RuntimeError: database is locked"
    )
