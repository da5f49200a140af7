"""The worker through a real broker in each ``scripts/kafka start --security`` profile: it
consumes and notifies end to end, and a wrong password, an untrusted CA, a host-name mismatch, a
wrong client certificate or a broker that is not there stop start-up within a bounded time with
one line that names the cause (no traceback, no secret)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.conftest import _free_port
from tests.factories import event, record
from tests.oidc import TokenEndpoint
from tests.processes import WorkerProcess
from tests.sinks import SmtpSink

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = ROOT / "scripts" / "kafka"
# one broker per profile, on fixed loopback ports (PLAINTEXT tests use the session broker)
PORTS = {"ssl": 39120, "sasl-ssl-scram": 39121, "sasl-plain": 39122, "oauthbearer": 39123}
NOTHING_LISTENS = "127.0.0.1:39199"
OIDC_CLIENT = ("shipment-worker", "oidc-client-secret-for-tests")
CONNECT_TIMEOUT = 4.0
BOUND = 30.0  # start-up gives up well within this (interpreter start, one probe, the exit)

SecuredEnv = Callable[[str], dict[str, str]]


@pytest.fixture(scope="session")
def token_endpoint() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint(*OIDC_CLIENT).start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


@pytest.fixture(scope="session")
def secured_kafka(
    tmp_path_factory: pytest.TempPathFactory, token_endpoint: TokenEndpoint
) -> Iterator[SecuredEnv]:
    """Factory: ``secured_kafka(profile)`` starts that profile's broker once per session with
    scripts/kafka and returns the KAFKA_* settings a client connects with (from client.env)."""
    started: dict[str, dict[str, str]] = {}
    states: list[Path] = []

    def start(profile: str) -> dict[str, str]:
        if profile in started:
            return started[profile]
        state = tmp_path_factory.mktemp(f"kafka-{profile}")
        states.append(state)
        command = [sys.executable, str(KAFKA_SCRIPT), "start", "--security", profile]
        result = subprocess.run(
            [*command, "--port", str(PORTS[profile]), "--state-dir", str(state)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"the {profile} broker did not start:\n{result.stderr}", pytrace=False)
        env = dict(line.split("=", 1) for line in (state / "client.env").read_text().splitlines())
        if profile == "oauthbearer":
            env |= {
                "KAFKA_OAUTH_TOKEN_URL": token_endpoint.url,
                "KAFKA_OAUTH_CLIENT_ID": OIDC_CLIENT[0],
                "KAFKA_OAUTH_CLIENT_SECRET": OIDC_CLIENT[1],
            }
        started[profile] = env
        return env

    try:
        yield start
    finally:
        for state in states:
            subprocess.run(
                [sys.executable, str(KAFKA_SCRIPT), "stop", "--state-dir", str(state)],
                capture_output=True,
                check=False,
            )


def _produce(env: dict[str, str], topic: str, events: list[dict[str, object]], tmp: Path) -> None:
    """scripts/produce.py with the profile's settings: the producer goes through the same
    kafka_client as the worker."""
    lines = tmp / f"{topic}.jsonl"
    lines.write_bytes(b"\n".join(record(e)[1] for e in events) + b"\n")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "produce.py"),
            str(lines),
            "--topic",
            topic,
            "--bootstrap",
            env["KAFKA_BOOTSTRAP_SERVERS"],
        ],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"produced {len(events)} records to {topic}" in result.stdout


@pytest.mark.parametrize("profile", list(PORTS))
async def test_worker_notifies_end_to_end_through_each_security_profile(
    profile: str,
    secured_kafka: SecuredEnv,
    worker_env: Callable[..., dict[str, str]],
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    """Produced through the profile's listener, an event is consumed by a worker process that
    connects with the same settings, and its email reaches the SMTP server."""
    kafka = secured_kafka(profile)
    topic = f"secured-{profile}-{uuid.uuid4().hex[:8]}"
    _produce(kafka, topic, [event(f"e-{profile}", "delivered", shipment_id="S1")], tmp_path)
    worker = WorkerProcess({**worker_env(topic), **kafka}, tmp_path / "worker.log").start()
    try:
        mails = await smtp_sink.wait_for(1, timeout=60)
        assert await worker.terminate() == 0
    finally:
        if worker.alive():
            worker.kill()
    assert mails[0].rcpt_tos == ["an@example.com"]
    (started,) = worker.named("worker_started")
    assert started["bootstrap_servers"] == kafka["KAFKA_BOOTSTRAP_SERVERS"]
    (notified,) = worker.named("event_notified")
    assert notified["event_id"] == f"e-{profile}"
    secret = kafka.get("KAFKA_SASL_PASSWORD") or kafka.get("KAFKA_SSL_KEY_PASSWORD")
    secret = secret or kafka["KAFKA_OAUTH_CLIENT_SECRET"]
    assert secret not in worker.log.read_text()


def _start_worker(env: dict[str, str], *command: str) -> tuple[int, str, float]:
    """Run ``python -m worker COMMAND`` to its end: exit code, stderr, seconds taken."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "worker", *(command or ("run",))],
        cwd=ROOT,
        env={**os.environ, **env, "LOG_FORMAT": "json", "KAFKA_CONNECT_TIMEOUT": "4"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stderr, time.monotonic() - started


def _last_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    return stderr.strip().splitlines()[-1]


@pytest.fixture
def other_ca(tmp_path: Path) -> dict[str, str]:
    """A CA the broker does not know, and a client certificate it signed."""
    ca = trustme.CA()
    client = ca.issue_cert("worker-client")
    paths = {name: tmp_path / f"other-{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    client.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    client.private_key_pem.write_to_path(str(paths["key"]))
    return {name: str(path) for name, path in paths.items()}


@pytest.mark.parametrize("profile", ["sasl-ssl-scram", "sasl-plain"])
def test_a_wrong_password_stops_start_up_at_once_saying_authentication_failed(
    profile: str, secured_kafka: SecuredEnv, worker_env: Callable[..., dict[str, str]]
) -> None:
    """The broker refuses the password: exit 2 with one line naming the bootstrap servers and
    'authentication failed', no retries, and neither password in the output."""
    kafka = secured_kafka(profile)
    wrong = "not-the-password-" + uuid.uuid4().hex
    env = {**worker_env("unused"), **kafka, "KAFKA_SASL_PASSWORD": wrong}
    code, stderr, took = _start_worker(env)
    line = _last_line(stderr)
    assert code == 2
    assert line.startswith(
        f"kafka error: KAFKA_BOOTSTRAP_SERVERS={kafka['KAFKA_BOOTSTRAP_SERVERS']}:"
    )
    assert "authentication failed" in line
    assert "kafka_connect_retry" not in stderr
    assert wrong not in stderr and kafka["KAFKA_SASL_PASSWORD"] not in stderr
    assert took < BOUND


def test_a_refused_oauth_client_stops_start_up_saying_authentication_failed(
    secured_kafka: SecuredEnv, worker_env: Callable[..., dict[str, str]]
) -> None:
    """The token endpoint refuses the client secret: exit 2, 'authentication failed' with the
    endpoint's error code, the secret nowhere in the output."""
    kafka = secured_kafka("oauthbearer")
    wrong = "wrong-secret-" + uuid.uuid4().hex
    env = {**worker_env("unused"), **kafka, "KAFKA_OAUTH_CLIENT_SECRET": wrong}
    code, stderr, took = _start_worker(env)
    line = _last_line(stderr)
    assert code == 2
    assert "authentication failed: token endpoint refused the client: HTTP 401 invalid_client" in (
        line
    )
    assert wrong not in stderr
    assert took < BOUND


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        ("untrusted-ca", "certificate not trusted"),
        ("host-mismatch", "host name mismatch"),
        ("foreign-client-cert", "the broker rejected the TLS client certificate"),
    ],
)
def test_tls_problems_stop_start_up_at_once_naming_the_cause(
    change: str,
    cause: str,
    secured_kafka: SecuredEnv,
    worker_env: Callable[..., dict[str, str]],
    other_ca: dict[str, str],
) -> None:
    """An unknown CA, a broker certificate for another host, or a client certificate the broker
    does not trust: exit 2 within the bound, one line naming the cause."""
    kafka = dict(secured_kafka("ssl"))
    if change == "untrusted-ca":
        kafka["KAFKA_SSL_CA_FILE"] = other_ca["ca"]
    elif change == "host-mismatch":  # the broker's certificate is for 127.0.0.1 only
        kafka["KAFKA_BOOTSTRAP_SERVERS"] = f"localhost:{PORTS['ssl']}"
    else:
        kafka |= {"KAFKA_SSL_CERT_FILE": other_ca["cert"], "KAFKA_SSL_KEY_FILE": other_ca["key"]}
        del kafka["KAFKA_SSL_KEY_PASSWORD"]
    code, stderr, took = _start_worker({**worker_env("unused"), **kafka})
    line = _last_line(stderr)
    assert code == 2
    assert line.startswith(
        f"kafka error: KAFKA_BOOTSTRAP_SERVERS={kafka['KAFKA_BOOTSTRAP_SERVERS']}:"
    )
    assert cause in line
    assert "kafka_connect_retry" not in stderr
    assert took < BOUND


@pytest.mark.parametrize("command", ["run", "dlq list", "dlq replay", "produce.py"])
def test_no_broker_is_retried_for_the_connect_timeout_then_named_in_one_line(
    command: str, worker_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """With nothing listening, every command that talks to Kafka logs each try as a JSON line,
    gives up after KAFKA_CONNECT_TIMEOUT and exits 1 naming KAFKA_BOOTSTRAP_SERVERS and the
    cause, without a traceback."""
    env = {**worker_env("unused"), "KAFKA_BOOTSTRAP_SERVERS": NOTHING_LISTENS}
    if command == "produce.py":
        events = tmp_path / "one.jsonl"
        events.write_bytes(record(event("e1", "shipped"))[1] + b"\n")
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "produce.py"),
                str(events),
                "--bootstrap",
                NOTHING_LISTENS,
            ],
            env={**os.environ, **env, "KAFKA_CONNECT_TIMEOUT": "4", "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        code, stderr, took = result.returncode, result.stderr, time.monotonic() - started
    else:
        code, stderr, took = _start_worker(env, *command.split())
    line = _last_line(stderr)
    assert code == 1
    assert line == (
        f"kafka error: KAFKA_BOOTSTRAP_SERVERS={NOTHING_LISTENS}: no broker answered within "
        f"{CONNECT_TIMEOUT:g} s ({line.split('(')[1].split(')')[0]}): connection refused"
    )
    tries = [entry for entry in stderr.splitlines() if '"event":"kafka_connect_retry"' in entry]
    assert len(tries) >= 2
    assert all('"error":"connection refused"' in entry for entry in tries)
    assert CONNECT_TIMEOUT <= took < CONNECT_TIMEOUT + 15


async def test_a_broker_that_comes_up_during_the_connect_timeout_is_waited_for(
    secured_kafka: SecuredEnv,
) -> None:
    """A broker that starts listening a little after the worker (Compose, Kubernetes) is
    connected to once it answers: the start-up check retried meanwhile and then returned."""
    from structlog.testing import capture_logs

    from worker.kafka_client import wait_for_broker
    from worker.settings import KafkaSettings

    kafka = secured_kafka("sasl-plain")
    host, port = kafka["KAFKA_BOOTSTRAP_SERVERS"].split(":")
    # a free port, not a fixed one: a fixed port in the ephemeral range may be any outgoing
    # connection's local port at that moment, and the late server then never listens
    late_port = _free_port()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    async def open_late() -> asyncio.Server:
        await asyncio.sleep(1.5)
        return await asyncio.start_server(forward, "127.0.0.1", late_port)

    settings = KafkaSettings(
        **{k.removeprefix("KAFKA_").lower(): v for k, v in kafka.items()}  # type: ignore[arg-type]
        | {"bootstrap_servers": f"127.0.0.1:{late_port}", "connect_timeout": 30.0}
    )
    opener = asyncio.create_task(open_late())
    with capture_logs() as logs:
        started = time.monotonic()
        await wait_for_broker(settings)
        took = time.monotonic() - started
    server = await opener
    server.close()
    tries = [entry for entry in logs if entry["event"] == "kafka_connect_retry"]
    assert tries and all(entry["error"] == "connection refused" for entry in tries)
    assert 1.5 <= took < 15
