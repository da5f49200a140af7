"""Reaching Redis as deployments do, against real servers on loopback: TLS with a CA, an ACL
user, mutual TLS, a 3-master Redis Cluster; and start-up failing at once, with the cause named
and no password shown, when the server refuses the worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.asyncio.cluster import RedisCluster

from tests.conftest import ROOT, MakeTopic, Produce
from tests.factories import event, record
from tests.processes import WorkerProcess, expected_for, received, wait_until_received
from tests.redis_servers import Servers, TlsServer, start_tls
from tests.sinks import SmsSink, SmtpSink
from worker.dedup import ShipmentState, Snapshot, open_store
from worker.dedup.redis import RedisClusterStore, RedisStore
from worker.dedup.redis_client import UrlOnly
from worker.dedup.resilient import Resilient
from worker.dedup.store import ChannelOutcome, Claim, EventRecord, StoreUnavailable

BOUND = 5.0  # seconds a refusal may take to be reported


def tls_options(server: TlsServer, **changes: Any) -> UrlOnly:
    options: dict[str, Any] = {
        "redis_username": server.username,
        "redis_password": SecretStr(server.password),
        "redis_ca_file": server.ca_file,
    }
    return UrlOnly(**{**options, **changes})


async def refusal(url: str, options: UrlOnly) -> str:
    """The StoreUnavailable message start-up's check gives, within BOUND seconds. As at
    start-up, a passing error is tried again: a server refusing a TLS 1.3 client certificate
    closes the connection after the handshake, and the client reads either its alert or, as
    the packets race, a reset; a later try reads the alert."""
    store = Resilient(open_store(url, 3600, redis=options), first_delay=0.05)
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.check()
    finally:
        await store.close()
    assert time.monotonic() - started < BOUND
    return str(caught.value)


async def test_rediss_with_the_ca_and_the_acl_user_works(redis_tls: TlsServer) -> None:
    """Through rediss:// verified against DEDUP_REDIS_CA_FILE, as the ACL user, the store
    checks out and keeps what it is given."""
    store = open_store(f"rediss://127.0.0.1:{redis_tls.port}/0", 3600, redis=tls_options(redis_tls))
    try:
        await store.check()
        await store.accept("e1", ("email",), "s1", ShipmentState("shipped", 1.0), "w/1", 60)
        assert (await store.load("e1", "s1")).event == EventRecord(("email",), {}, "s1")
    finally:
        await store.close()


async def test_the_user_and_password_may_be_in_the_url(redis_tls: TlsServer) -> None:
    """rediss://user:password@host works as the separate settings do."""
    url = f"rediss://{redis_tls.username}:{redis_tls.password}@127.0.0.1:{redis_tls.port}/0"
    store = open_store(url, 3600, redis=UrlOnly(redis_ca_file=redis_tls.ca_file))
    try:
        await store.check()
    finally:
        await store.close()


@pytest.fixture(scope="module")
def redis_mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """A TLS server that requires a client certificate signed by its CA."""
    servers = Servers()
    try:
        yield start_tls(tmp_path_factory.mktemp("redis-mtls"), servers, client_certificates="yes")
    finally:
        servers.stop()


async def test_a_client_certificate_is_presented(redis_mtls: TlsServer) -> None:
    """With DEDUP_REDIS_CERT_FILE and DEDUP_REDIS_KEY_FILE the store connects to a server that
    requires a client certificate."""
    options = tls_options(
        redis_mtls,
        redis_cert_file=redis_mtls.client_cert_file,
        redis_key_file=redis_mtls.client_key_file,
    )
    store = open_store(f"rediss://127.0.0.1:{redis_mtls.port}/0", 3600, redis=options)
    try:
        await store.check()
    finally:
        await store.close()


async def test_a_missing_client_certificate_is_named(redis_mtls: TlsServer) -> None:
    """Without a client certificate, a server that requires one refuses the handshake: named
    at start-up, not waited for."""
    message = await refusal(f"rediss://127.0.0.1:{redis_mtls.port}/0", tls_options(redis_mtls))
    print(message)
    assert message.startswith("Redis TLS handshake failed (")
    assert "DEDUP_REDIS_CERT_FILE" in message


async def test_a_wrong_password_is_named_and_not_shown(redis_tls: TlsServer) -> None:
    """A refused password stops at once with 'authentication failed', never the password."""
    wrong = "not-" + redis_tls.password
    url = f"rediss://127.0.0.1:{redis_tls.port}/0"
    message = await refusal(url, tls_options(redis_tls, redis_password=SecretStr(wrong)))
    print(message)
    assert message.startswith("Redis authentication failed (")
    assert "DEDUP_REDIS_PASSWORD" in message
    assert wrong not in message and redis_tls.password not in message


async def test_no_password_is_an_authentication_failure(redis_tls: TlsServer) -> None:
    """A server whose default user is off refuses a client without credentials, by name."""
    options = UrlOnly(redis_ca_file=redis_tls.ca_file)
    message = await refusal(f"rediss://127.0.0.1:{redis_tls.port}/0", options)
    print(message)
    assert message.startswith("Redis authentication failed (")


async def test_a_wrong_ca_is_an_untrusted_certificate(redis_tls: TlsServer) -> None:
    """A server certificate the configured CA did not sign: 'certificate not trusted'."""
    options = tls_options(redis_tls, redis_ca_file=redis_tls.other_ca_file)
    message = await refusal(f"rediss://127.0.0.1:{redis_tls.port}/0", options)
    print(message)
    assert message.startswith("Redis TLS certificate not trusted (")
    assert "DEDUP_REDIS_CA_FILE" in message


async def test_another_host_name_is_a_mismatch(redis_tls: TlsServer) -> None:
    """The certificate names 127.0.0.1 only: reached as localhost it is a host name
    mismatch, although its CA is trusted."""
    message = await refusal(f"rediss://localhost:{redis_tls.port}/0", tls_options(redis_tls))
    print(message)
    assert message.startswith("Redis TLS host name mismatch:")
    assert "localhost" in message


def test_the_worker_stops_at_start_up_naming_the_cause(redis_tls: TlsServer) -> None:
    """``python -m worker run`` with a refused password exits 2 within a bounded time, one
    line naming DEDUP_URL and the cause, and prints the password nowhere."""
    wrong = "not-" + redis_tls.password
    env = {
        **os.environ,
        "DEDUP_URL": f"rediss://127.0.0.1:{redis_tls.port}/0",
        "DEDUP_REDIS_USERNAME": redis_tls.username,
        "DEDUP_REDIS_PASSWORD": wrong,
        "DEDUP_REDIS_CA_FILE": str(redis_tls.ca_file),
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # never reached: the store is checked first
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": "0",
        "LOG_FORMAT": "json",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 30
    print(done.stderr)
    assert done.returncode == 2
    # the probe server's JSON line comes first (it serves from start-up), then the one error
    *logged, error = done.stderr.splitlines()
    assert [json.loads(line)["event"] for line in logged] == ["probes_serving"]
    assert error.startswith("start-up error: DEDUP_URL: Redis authentication failed (")
    assert wrong not in done.stderr + done.stdout


async def test_the_worker_notifies_through_rediss_as_the_acl_user(
    new_topic: MakeTopic,
    produce: Produce,
    worker_env: Callable[..., dict[str, str]],
    smtp_sink: SmtpSink,
    sms_sink: SmsSink,
    redis_tls: TlsServer,
    tmp_path: Path,
) -> None:
    """End to end: a worker whose store is the TLS server, reached as the ACL user with the
    CA, notifies each event once and records the outcomes there."""
    topic = await new_topic(partitions=2)
    events = [
        event(f"T{n}-0", "shipped", shipment_id=f"T{n}", customer={"phone": f"+141555501{n:02d}"})
        for n in range(5)
    ]
    env = worker_env(
        topic,
        DEDUP_URL=f"rediss://127.0.0.1:{redis_tls.port}/0",
        DEDUP_KEY_PREFIX=f"{topic}:",
        DEDUP_REDIS_USERNAME=redis_tls.username,
        DEDUP_REDIS_PASSWORD=redis_tls.password,
        DEDUP_REDIS_CA_FILE=str(redis_tls.ca_file),
    )
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    await produce(topic, [record(e) for e in events])
    expected = expected_for(events)
    await wait_until_received(smtp_sink, sms_sink, expected, timeout=60)
    assert await worker.terminate() == 0
    got = received(smtp_sink, sms_sink)
    assert (set(got.emails), set(got.sms), got.duplicates) == (expected.emails, expected.sms, 0)
    store = open_store(env["DEDUP_URL"], 3600, f"{topic}:", tls_options(redis_tls))
    try:
        snapshot = await store.load("T0-0", "T0")
    finally:
        await store.close()
    assert snapshot.event == EventRecord(("email", "sms"), {"email": "sent", "sms": "sent"}, "T0")
    assert redis_tls.password not in worker.log.read_text()


@pytest.fixture
async def cluster(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster_url, decode_responses=True)
    await client.initialize()
    yield client
    await client.aclose()


@pytest.fixture
def cluster_prefix() -> Iterator[str]:
    yield f"test-{uuid.uuid4().hex[:8]}:"


async def test_cluster_keys_spread_over_the_masters(
    redis_cluster_url: str, cluster: RedisCluster, cluster_prefix: str
) -> None:
    """Events of many shipments land on every master, each event's record and claims on one
    slot (the scripts would fail with CROSSSLOT otherwise)."""
    store = open_store(redis_cluster_url, 3600, cluster_prefix, UrlOnly(redis_cluster=True))
    try:
        for i in range(30):
            state = ShipmentState("shipped", 1.0)
            await store.accept(f"e{i}", ("email", "sms"), f"s{i}", state, "w/1", 60)
    finally:
        await store.close()
    slots: dict[str, set[int]] = {}
    for node in cluster.get_primaries():
        async for key in cluster.scan_iter(match=f"{cluster_prefix}*", target_nodes=node):
            slots.setdefault(node.name, set()).add(cluster.keyslot(key))
    assert len(slots) == 3
    for i in range(30):
        event_key = f"{cluster_prefix}{{evt:e{i}}}"
        same = {cluster.keyslot(event_key), cluster.keyslot(f"{event_key}:claim:sms")}
        assert len(same) == 1


async def test_cluster_ids_with_braces_keep_an_events_keys_on_one_slot(
    redis_cluster_url: str, cluster_prefix: str
) -> None:
    """Event and shipment ids holding { and } (ids are the producers') still give an event's
    record and claims one hash tag: every script runs."""
    store = open_store(redis_cluster_url, 3600, cluster_prefix, UrlOnly(redis_cluster=True))
    try:
        for event_id in ("}a", "a}b{c", "{x}", "{}"):
            state = ShipmentState("shipped", 1.0)
            assert await store.accept(event_id, ("email", "sms"), "{s}", state, "w/1", 60) == (
                "email",
                "sms",
            )
            await store.mark_done(event_id, "email", ChannelOutcome.SENT)
            assert await store.claim(event_id, "sms", "w/1", 60) == Claim(True)
            await store.reopen(event_id, "email")
            assert (await store.load(event_id, "{s}")).event == EventRecord(
                ("email", "sms"), {}, "{s}"
            )
    finally:
        await store.close()


class _DiesBetweenTheSteps(RedisClusterStore):
    """A worker killed after the event's step of ``accept``, before the shipment's."""

    async def _advance(self, shipment_id: str, state: ShipmentState) -> ShipmentState | None:
        raise SystemExit("killed")


async def test_an_accept_cut_between_its_steps_is_finished_by_the_next_load(
    redis_cluster_url: str, cluster_prefix: str
) -> None:
    """The record is stored and claimed but the shipment's state not moved on: the next
    load of the event moves it, so a later older event of the shipment is still stale."""
    options = UrlOnly(redis_cluster=True)
    dying = _DiesBetweenTheSteps(
        RedisCluster.from_url(redis_cluster_url, decode_responses=True), 3600, cluster_prefix
    )
    store = open_store(redis_cluster_url, 3600, cluster_prefix, options)
    try:
        await store.accept("e1", ("email",), "s1", ShipmentState("shipped", 1000.0), "w/1", 60)
        with pytest.raises(SystemExit):
            await dying.accept("e2", ("sms",), "s1", ShipmentState("delivered", 2000.0), "w/1", 60)
        assert (await store.load("e1", "s1")).shipment == ShipmentState("shipped", 1000.0)
        assert await store.load("e2", "s1") == Snapshot(
            event=EventRecord(("sms",), {}, "s1"), shipment=ShipmentState("delivered", 2000.0)
        )
        assert (await store.load("e3", "s1")).shipment == ShipmentState("delivered", 2000.0)
    finally:
        await dying.close()
        await store.close()


async def test_single_server_keys_are_those_earlier_versions_wrote(redis_url: str) -> None:
    """The single-server layout is unchanged: a record, a shipment state and a claim written
    under the earlier key names are read, so existing data keeps working."""
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await raw.hset(
            f"{prefix}evt:e1",
            mapping={"channels": '["email", "sms"]', "shipment": "s1", "done:email": "sent"},
        )
        await raw.hset(f"{prefix}shp:s1", mapping={"status": "shipped", "occurred_at": "1.5"})
        await raw.set(f"{prefix}claim:e1:sms", "worker-a/1", px=60_000)
    finally:
        await raw.aclose()
    store = open_store(redis_url, 3600, prefix)
    assert isinstance(store, RedisStore) and not isinstance(store, RedisClusterStore)
    try:
        assert await store.load("e1", "s1") == Snapshot(
            event=EventRecord(("email", "sms"), {"email": "sent"}, "s1"),
            shipment=ShipmentState("shipped", 1.5),
        )
        claim = await store.claim("e1", "sms", "worker-b/1", 60)
        assert claim.holder == "worker-a/1"
    finally:
        await store.close()


async def test_a_cluster_node_without_the_cluster_setting_is_named(redis_cluster_url: str) -> None:
    """One server's store pointed at a cluster node (its scripts would fail with CROSSSLOT)
    stops at start-up, saying which setting is missing."""
    message = await refusal(redis_cluster_url, UrlOnly())
    assert message == "DEDUP_URL names a Redis Cluster node: set DEDUP_REDIS_CLUSTER=true"


async def test_the_cluster_setting_on_one_server_is_named(redis_url: str) -> None:
    """DEDUP_REDIS_CLUSTER against a server that is not a cluster node stops at start-up."""
    message = await refusal(redis_url, UrlOnly(redis_cluster=True))
    assert message.startswith(
        "DEDUP_REDIS_CLUSTER is set but DEDUP_URL's server is not a Redis Cluster node"
    )
