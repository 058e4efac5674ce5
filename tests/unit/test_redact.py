"""Credentials in a Redis URL never reach a log line, a status or an error: every form redis-py accepts is redacted.

redis-py takes a password from the URL's user part (`redis://user:PASS@host`, `redis://:PASS@host`) and from
its query (`?password=PASS`, `?username=USER`, any query parameter becomes a connection argument).
"""

from __future__ import annotations

import logging
import socket

import fakeredis
import pytest
import redis

import bookrec.producer.client
from bookrec import cli
from bookrec.producer import Client
from bookrec.shared.errors import ConfigError, RedisUnavailable
from bookrec.shared.logs import RedactSecrets
from bookrec.shared.redis_conn import connect, unavailable
from bookrec.shared.settings import Settings, redact_url

SECRET = "s3cret-Pa55"

REDACTED = {
    "redis://localhost:6379/0": "redis://localhost:6379/0",
    f"redis://:{SECRET}@h:6379/0": "redis://:***@h:6379/0",
    f"redis://bookrec:{SECRET}@h/0": "redis://bookrec:***@h/0",
    f"rediss://bookrec:{SECRET}@h:6380/0?ssl_cert_reqs=required": "rediss://bookrec:***@h:6380/0?ssl_cert_reqs=required",
    f"redis://h:6379/0?password={SECRET}": "redis://h:6379/0?password=***",
    f"redis://h/0?db=2&username=ops&password={SECRET}": "redis://h/0?db=2&username=***&password=***",
    f"redis://h/0?PASSWORD={SECRET}#top": "redis://h/0?PASSWORD=***#top",
    f"unix:///run/redis.sock?db=1&password={SECRET}": "unix:///run/redis.sock?db=1&password=***",
    f"redis://:{SECRET}/x@y@h:6379/0": "redis://:***@h:6379/0",  # '/' and '@' inside the password
    f"redis://:{SECRET}@h:notaport/0": "redis://:***@h:notaport/0",  # a URL urlsplit cannot read a port from
}


@pytest.mark.parametrize("url", REDACTED, ids=list(REDACTED))
def test_every_credential_form_is_redacted(url: str) -> None:
    assert redact_url(url) == REDACTED[url]


def test_redis_py_really_takes_credentials_from_the_query() -> None:
    """Control: the query forms are credentials, not decoration."""
    options = redis.connection.parse_url(f"redis://h:6379/0?username=ops&password={SECRET}")
    assert (options["username"], options["password"]) == ("ops", SECRET)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_status_and_errors_hide_a_password_in_the_query() -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0?password={SECRET}"
    client = Client(redis_url=url, settings=Settings())

    with pytest.raises(RedisUnavailable) as down:
        client.status()
    refused = unavailable(client.settings, redis.exceptions.AuthenticationError("invalid password"))

    assert "password=***" in str(down.value) and SECRET not in str(down.value)
    assert "refused the credentials" in str(refused) and SECRET not in str(refused)
    assert client.settings.redis_url_redacted == url.replace(SECRET, "***")


def test_a_malformed_url_error_hides_the_password() -> None:
    with pytest.raises(ConfigError) as refused:
        connect(Settings(redis_url=f"http://:{SECRET}@h:6379/0?password={SECRET}"))

    assert SECRET not in str(refused.value)


def test_log_records_have_every_credential_form_redacted() -> None:
    record = logging.LogRecord(
        "t",
        logging.INFO,
        __file__,
        1,
        "connecting to %s and %s",
        (f"redis://u:{SECRET}@h/0", f"redis://h/0?password={SECRET}"),
        None,
    )

    RedactSecrets().filter(record)

    assert record.getMessage() == "connecting to redis://u:***@h/0 and redis://h/0?password=***"


def test_bookrec_status_and_client_status_show_the_url_redacted(
    redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    url = f"redis://ops:{SECRET}@127.0.0.1:6379/0?username=ops&password={SECRET}"
    monkeypatch.setenv("BOOKREC_REDIS_URL", url)
    monkeypatch.setattr(bookrec.producer.client, "connect", lambda settings: redis)

    status = Client().status()
    text_code, json_code = cli.main(["status"]), cli.main(["status", "--json"])
    out, err = capsys.readouterr()

    assert status["redis"] == "redis://ops:***@127.0.0.1:6379/0?username=***&password=***"
    assert (text_code, json_code) == (0, 0) and status["redis"] in out
    assert SECRET not in out + err
