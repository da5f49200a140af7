"""scripts/kafka: a broker that starts, answers real clients, and stops without leaving a JVM,
on the default 4.x line and on 3.9."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
KAFKA = [sys.executable, str(ROOT / "scripts" / "kafka")]


def _kafka(*args: str, version: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_VERSION"}
    if version is not None:
        env["KAFKA_VERSION"] = version
    return subprocess.run([*KAFKA, *args], capture_output=True, text=True, env=env, check=False)


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for a parent (in a container, PID 1 may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("version", [None, "3.9.2"], ids=["default-4.x", "3.9.2"])
async def test_broker_starts_serves_a_client_and_stops_cleanly(
    version: str | None, tmp_path: Path
) -> None:
    """start prints a bootstrap a real client can produce to and consume from; status reports
    it; stop ends exactly that JVM."""
    state = str(tmp_path / "kafka")
    started = _kafka("start", "--state-dir", state, version=version)
    assert started.returncode == 0, started.stderr
    bootstrap = started.stdout.strip().splitlines()[-1]
    pid = int((tmp_path / "kafka" / "kafka.pid").read_text())
    try:
        status = _kafka("status", "--state-dir", state, version=version)
        assert status.stdout.strip() == f"running {bootstrap} pid {pid}"
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait("launcher-check", b"hello", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            "launcher-check", bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), 30)
        finally:
            await consumer.stop()
        assert (record.key, record.value) == (b"k", b"hello")
        again = _kafka("start", "--state-dir", state, version=version)
        assert again.returncode == 1
    finally:
        stopped = _kafka("stop", "--state-dir", state, version=version)
    assert stopped.returncode == 0
    assert not _alive(pid)
    assert _kafka("status", "--state-dir", state, version=version).returncode == 1
