"""Shared fixtures: a real Kafka broker for the session, fresh topics, producer/consumer helpers.

The broker is the one named by ``KAFKA_BOOTSTRAP_SERVERS`` when that is set (CI starts one with
``scripts/kafka``), otherwise the fixture starts its own with the same script. If it cannot
start, the tests that need it fail with the launcher's error: they are never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from tests import redis_servers
from tests.sinks import SmsSink, SmtpSink
from worker import app
from worker.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = ROOT / "scripts" / "kafka"

MakeTopic = Callable[..., Awaitable[str]]
Produce = Callable[..., Awaitable[None]]


# modules whose tests run on each event loop the worker offers (EVENT_LOOP), as their code
# drives transports directly: uvloop's are not asyncio's
BOTH_LOOPS = (
    "tests.test_smtp_exchange",
    "tests.test_smtp_channel",
    "tests.test_http_client",
    "tests.test_http_hostile",
    "tests.test_http_hostile_sms",
    "tests.test_probes",
    "tests.test_mail_hostile",
)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    module = getattr(item, "module", None)
    if module is not None and module.__name__ in BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}  # one factory: the test's id stays as it is


@pytest.fixture(autouse=True)
def _no_leftover_worker_processes() -> Iterator[None]:
    """A test that fails half-way must not leave worker processes running."""
    yield
    from tests.processes import WorkerProcess

    WorkerProcess.kill_leftovers()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a running broker: the given one, or one started for this session."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    state = tmp_path_factory.mktemp("kafka")
    started = subprocess.run(
        [sys.executable, str(KAFKA_SCRIPT), "start", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        check=False,
    )
    if started.returncode != 0:
        pytest.fail(f"the local Kafka broker did not start:\n{started.stderr}", pytrace=False)
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(
            [sys.executable, str(KAFKA_SCRIPT), "stop", "--state-dir", str(state)], check=False
        )


@pytest.fixture
async def new_topic(kafka_bootstrap: str) -> AsyncIterator[MakeTopic]:
    """Factory: ``await new_topic(partitions=3)`` creates a uniquely named topic, deleted after
    the test."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    created: list[str] = []

    async def make(partitions: int = 1, prefix: str = "test", name: str | None = None) -> str:
        name = name or f"{prefix}-{uuid.uuid4().hex[:12]}"
        await admin.create_topics([NewTopic(name, partitions, replication_factor=1)])
        created.append(name)
        return name

    try:
        yield make
    finally:
        if created:
            await admin.delete_topics(created)
        await admin.close()


@pytest.fixture
async def produce(kafka_bootstrap: str) -> AsyncIterator[Produce]:
    """``await produce(topic, [(key, value), ...], partition=None)``: sends and waits for acks."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()

    async def send(
        topic: str,
        records: list[tuple[bytes | None, bytes]],
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        for key, value in records:
            await producer.send(topic, value, key=key, partition=partition, headers=headers)
        await producer.flush()

    try:
        yield send
    finally:
        await producer.stop()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A real SMTP server on loopback that keeps what it accepts."""
    sink = SmtpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
def sms_sink() -> Iterator[SmsSink]:
    """A real HTTP server on loopback standing in for the SMS provider's API."""
    sink = SmsSink().start()
    try:
        yield sink
    finally:
        sink.stop()


SMS_SID = "AC00000000000000000000000000000001"


@pytest.fixture
def worker_env(
    kafka_bootstrap: str, smtp_sink: SmtpSink, sms_sink: SmsSink, tmp_path: Path
) -> Callable[..., dict[str, str]]:
    """Factory: the environment of a worker that reads ``topic`` and sends to the sinks."""

    def make(topic: str, **overrides: str) -> dict[str, str]:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPIC": topic,
            "KAFKA_GROUP_ID": f"notifier-{topic}",
            "KAFKA_COMMIT_INTERVAL": "0.2",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp_sink.port),
            "SMTP_SECURITY": "none",
            "EMAIL_FROM": "Cửa hàng Sen <no-reply@shop.example>",
            "SMS_PROVIDER": "twilio",
            "SMS_API_URL": sms_sink.url,
            "SMS_ACCOUNT_SID": SMS_SID,
            "SMS_AUTH_TOKEN": "test-token",
            "SMS_FROM": "+15005550006",
            "DEDUP_URL": f"sqlite:///{tmp_path / 'dedup.sqlite3'}",
            "DATA_DIR": str(tmp_path / "data"),
            "SEND_RETRY_BASE": "0.05",
            "SHOP_NAME": "Test Shop",
            "LOG_LEVEL": "INFO",
            # many workers run at once: each probe server on a free port of loopback
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": "0",
            # quiet hours are on for SMS by default: a test's outcome must not hang on the hour
            "SMS_QUIET_HOURS": "off",
        }
        env.update(overrides)
        return env

    return make


@pytest.fixture
def run_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[dict[str, str]], contextlib.AbstractAsyncContextManager[None]]]:
    """``async with run_worker(env):`` runs the whole worker in this event loop; leaving the
    block stops it the way SIGTERM would (drain, commit, close)."""

    @contextlib.asynccontextmanager
    async def running(env: dict[str, str]) -> AsyncIterator[None]:
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            settings = load_settings()
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(settings, install_signal_handlers=False, stop=stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

    yield running


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets on ``topic``; empty while the group has none (or its
    coordinator is still loading)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except KafkaError:
        return {}
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


async def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 30) -> list[Any]:
    """The first ``count`` records of ``topic`` (all partitions), then checks nothing follows."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < count:
                batch = await consumer.getmany(timeout_ms=200)
                for part in batch.values():
                    records.extend(part)
        extra = await consumer.getmany(timeout_ms=500)
        records.extend(r for part in extra.values() for r in part)
    finally:
        await consumer.stop()
    return records


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis server: ``REDIS_URL`` when set, else one started on a free loopback port
    (``redis-server`` from Debian's packages; ``scripts/bootstrap`` installs it)."""
    given = os.environ.get("REDIS_URL")
    if given:
        yield given
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run scripts/bootstrap", pytrace=False)
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(port, server)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A seed node of a real 3-master Redis Cluster: ``REDIS_CLUSTER_URL`` when set, else one
    started on loopback for the session (``tests/redis_servers.py``)."""
    given = os.environ.get("REDIS_CLUSTER_URL")
    if given:
        yield given
        return
    servers = redis_servers.Servers()
    try:
        yield redis_servers.start_cluster(tmp_path_factory.mktemp("redis-cluster"), servers)
    except redis_servers.ServerFailed as exc:
        pytest.fail(f"the Redis Cluster did not start: {exc}", pytrace=False)
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis_servers.TlsServer]:
    """A real TLS-only Redis server with an ACL user, started on loopback for the session."""
    servers = redis_servers.Servers()
    try:
        yield redis_servers.start_tls(tmp_path_factory.mktemp("redis-tls"), servers)
    except redis_servers.ServerFailed as exc:
        pytest.fail(f"the TLS Redis server did not start: {exc}", pytrace=False)
    finally:
        servers.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"redis-server exited with {process.returncode}", pytrace=False)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"redis-server did not listen on {port} within {timeout}s", pytrace=False)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say which real services this run uses, so a log shows the broker tests were real."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    version = os.environ.get("KAFKA_VERSION", "the launcher's default (4.x)")
    kafka = f"the broker at {given}" if given else f"a broker started by scripts/kafka, {version}"
    redis = os.environ.get("REDIS_URL") or f"redis-server from {shutil.which('redis-server')}"
    return [f"real services: Kafka: {kafka}; Redis: {redis}; SMTP: aiosmtpd; SMS: http.server"]
