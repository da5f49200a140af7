"""Run the worker end to end on loopback and show what customers received.

Starts a local Kafka broker (scripts/kafka), the SMTP and SMS catchers (tests/sinks.py, writing
into ``out/demo``), publishes ``samples/events.jsonl``, runs ``python -m worker run`` until
every record is committed, saves a scrape of its ``/metrics`` (``out/demo/metrics.txt``), stops
everything and prints a summary. Run it with ``scripts/demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TOPIC = "shipment-status"
GROUP = "shipment-notifier-demo"


def stop_kafka(state: Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "kafka"), "stop", "--state-dir", str(state)],
        check=False,
        capture_output=True,
    )


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for_ports(*ports: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not all(listening(p) for p in ports):
        if time.monotonic() > deadline:
            sys.exit(f"the SMTP/SMS catchers did not listen on {ports} within {timeout}s")
        time.sleep(0.1)


def start_kafka(state: Path) -> str:
    stop_kafka(state)
    started = subprocess.run(
        [str(ROOT / "scripts" / "kafka"), "start", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        check=False,
    )
    if started.returncode != 0:
        sys.exit(f"Kafka did not start:\n{started.stderr}")
    return started.stdout.strip().splitlines()[-1]


async def committed_total(bootstrap: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(GROUP)
        return sum(meta.offset for tp, meta in offsets.items() if tp.topic == TOPIC)
    except Exception:  # the group does not exist until its first commit
        return 0
    finally:
        await admin.close()


def wait_until_committed(bootstrap: str, records: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(committed_total(bootstrap)) >= records:
            return True
        time.sleep(0.5)
    return False


def worker_env(
    bootstrap: str, out: Path, smtp_port: int, sms_port: int, metrics_port: int
) -> dict[str, str]:
    return {
        "SMS_QUIET_HOURS": "off",  # every SMS shows at once, whatever the hour (env overrides)
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC": TOPIC,
        "KAFKA_GROUP_ID": GROUP,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "SMTP_SECURITY": "none",
        "EMAIL_FROM": "Cửa hàng Sen <no-reply@shop.example>",
        "SMS_PROVIDER": "webhook",
        "SMS_WEBHOOK_URL": f"http://127.0.0.1:{sms_port}/sms",
        "DEDUP_URL": f"sqlite:///{out / 'dedup.sqlite3'}",
        "SHOP_NAME": "Cửa hàng Sen",
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(metrics_port),
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "console"),
    }


def save_metrics(port: int, out: Path) -> None:
    """The worker's /metrics as it stands, into ``out/metrics.txt``; its notification counts
    printed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    (out / "metrics.txt").write_text(text, encoding="utf-8")
    print(f"\nmetrics scraped into {out / 'metrics.txt'}; notifications by outcome:")
    for line in text.splitlines():
        if line.startswith("shipment_notifier_notifications_total{"):
            print(f"  {line}")


def summarize(out: Path, log: Path) -> tuple[int, int]:
    emails = sorted((out / "email").glob("*.eml"))
    sms = sorted((out / "sms").glob("*.json"))
    outcomes: dict[str, int] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "outcome" in entry:
            outcomes[entry["event"]] = outcomes.get(entry["event"], 0) + 1
    print(f"\n{len(emails)} emails in {out / 'email'} (.eml as sent, .html to open in a browser)")
    print(f"{len(sms)} SMS in {out / 'sms'}")
    print(f"worker log (JSON lines): {log}")
    for name, count in sorted(outcomes.items()):
        print(f"  {name}: {count}")
    if sms:
        print(f"\nfor example, {sms[0].name}: {json.loads(sms[0].read_text())['body']}")
    return len(emails), len(sms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, default=ROOT / "samples" / "events.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "demo")
    parser.add_argument("--smtp-port", type=int, default=2525)
    parser.add_argument("--sms-port", type=int, default=8025)
    parser.add_argument("--metrics-port", type=int, default=9464)
    args = parser.parse_args()
    out: Path = args.out.resolve()
    kafka_state = out / "kafka"
    stop_kafka(kafka_state)  # a broker left by an interrupted run, before its folder goes
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for port in (args.smtp_port, args.sms_port, args.metrics_port):
        if listening(port):
            sys.exit(
                f"port {port} is taken; pass --smtp-port/--sms-port/--metrics-port with free ones"
            )

    print("starting Kafka ...", flush=True)
    bootstrap = start_kafka(kafka_state)
    sinks = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "tests.sinks",
            "--out",
            str(out),
            "--smtp-port",
            str(args.smtp_port),
            "--sms-port",
            str(args.sms_port),
        ],
        cwd=ROOT,
    )
    wait_for_ports(args.smtp_port, args.sms_port)
    worker = None
    log = out / "worker.log"
    try:
        records = len([x for x in args.events.read_bytes().splitlines() if x.strip()])
        subprocess.run(
            [
                PYTHON,
                str(ROOT / "scripts" / "produce.py"),
                str(args.events),
                "--topic",
                TOPIC,
                "--bootstrap",
                bootstrap,
            ],
            check=True,
        )
        env = worker_env(bootstrap, out, args.smtp_port, args.sms_port, args.metrics_port)
        env["LOG_FORMAT"] = "json"
        with log.open("w") as log_file:
            worker = subprocess.Popen(
                [PYTHON, "-m", "worker", "run"], cwd=ROOT, env=env, stderr=log_file
            )
            print(
                f"worker running (pid {worker.pid}), waiting for {records} records ...", flush=True
            )
            done = wait_until_committed(bootstrap, records, timeout=120)
            if done:
                save_metrics(args.metrics_port, out)
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(30)
        emails, texts = summarize(out, log)
        if not done or code != 0 or not emails:
            sys.exit(
                f"demo failed: all committed={done}, worker exit code={code}, "
                f"{emails} emails, {texts} SMS"
            )
    finally:
        if worker and worker.poll() is None:
            worker.kill()
        sinks.terminate()
        sinks.wait(10)
        stop_kafka(kafka_state)


if __name__ == "__main__":
    main()
