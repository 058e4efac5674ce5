"""Connecting through Redis Sentinel: BOOKREC_REDIS_SENTINELS and BOOKREC_REDIS_SENTINEL_MASTER are checked with
errors naming the variable, and `connect` gives a client of the master the sentinels name, with the URL's database,
credentials and TLS; messages name the sentinels and hide every password. (The failover itself:
tests/integration/test_sentinel.py.)"""

from __future__ import annotations

import pytest
import redis
from redis.sentinel import SentinelConnectionPool, SentinelManagedConnection, SentinelManagedSSLConnection

from bookrec.shared.errors import ConfigError, RedisUnavailable
from bookrec.shared.redis_conn import connect, ping
from bookrec.shared.settings import Settings
from tests.integration.redis_server import free_port

SENTINEL_ENV = {
    "BOOKREC_REDIS_SENTINELS": "10.0.0.5:26379, sentinel-b:26380,[::1]:26381",
    "BOOKREC_REDIS_SENTINEL_MASTER": "bookrec",
}


def test_sentinels_are_read_as_host_port_pairs_and_unset_means_none() -> None:
    settings = Settings.from_env(SENTINEL_ENV)
    assert settings.redis_sentinels == (("10.0.0.5", 26379), ("sentinel-b", 26380), ("::1", 26381))
    assert settings.redis_sentinel_master == "bookrec"
    assert Settings.from_env({}).redis_sentinels == ()
    assert Settings.from_env({}).redis_wait_replicas == 0


@pytest.mark.parametrize("address", ["sentinel-b", "sentinel-b:", ":26379", "sentinel-b:port", "sentinel-b:70000"])
def test_a_malformed_sentinel_address_is_refused_naming_it(address: str) -> None:
    with pytest.raises(ConfigError, match=f"BOOKREC_REDIS_SENTINELS holds {address!r}, not a host:port"):
        Settings.from_env({**SENTINEL_ENV, "BOOKREC_REDIS_SENTINELS": f"10.0.0.5:26379,{address}"})


def test_sentinels_without_a_master_name_are_refused() -> None:
    with pytest.raises(ConfigError, match="BOOKREC_REDIS_SENTINEL_MASTER is not"):
        Settings.from_env({"BOOKREC_REDIS_SENTINELS": "10.0.0.5:26379"})


def test_wait_replicas_must_be_a_count() -> None:
    with pytest.raises(ConfigError, match="BOOKREC_REDIS_WAIT_REPLICAS"):
        Settings.from_env({"BOOKREC_REDIS_WAIT_REPLICAS": "-1"})


def test_the_client_asks_the_sentinels_for_the_master_with_the_url_s_database_and_credentials() -> None:
    env = {
        **SENTINEL_ENV,
        "BOOKREC_REDIS_URL": "redis://app:s3cret@ignored:1/4",
        "BOOKREC_REDIS_SENTINEL_PASSWORD": "sp",
    }
    client = connect(Settings.from_env(env))
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "bookrec"
    assert pool.connection_class is SentinelManagedConnection
    assert {k: pool.connection_kwargs[k] for k in ("db", "username", "password")} == {
        "db": 4,
        "username": "app",
        "password": "s3cret",
    }
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["host"] for s in sentinels] == ["10.0.0.5", "sentinel-b", "::1"]
    assert {s.connection_pool.connection_kwargs["password"] for s in sentinels} == {"sp"}


def test_a_rediss_url_makes_master_and_sentinel_connections_tls() -> None:
    client = connect(Settings.from_env({**SENTINEL_ENV, "BOOKREC_REDIS_URL": "rediss://:pw@ignored:1/0"}))
    assert client.connection_pool.connection_class is SentinelManagedSSLConnection
    sentinel = client.connection_pool.sentinel_manager.sentinels[0]
    assert sentinel.connection_pool.connection_class is redis.SSLConnection


def test_no_sentinel_answering_is_redis_unavailable_naming_the_sentinels_without_the_password() -> None:
    port = free_port()  # nothing listens there
    env = {
        "BOOKREC_REDIS_SENTINELS": f"127.0.0.1:{port}",
        "BOOKREC_REDIS_SENTINEL_MASTER": "bookrec",
        "BOOKREC_REDIS_URL": "redis://:hunter2hunter2@ignored:1/0",
    }
    settings = Settings.from_env(env)
    with pytest.raises(RedisUnavailable) as caught:
        ping(connect(settings, retries=0), settings)
    message = str(caught.value)
    assert f"sentinel master 'bookrec' at 127.0.0.1:{port}" in message
    assert "BOOKREC_REDIS_SENTINEL_MASTER" in message and "hunter2" not in message
