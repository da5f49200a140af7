"""Real Redis servers on loopback for the tests: a 3-master Redis Cluster, and a TLS server
with an ACL user. ``redis-server`` and ``redis-cli`` come from Debian's packages
(``scripts/bootstrap --for-tests`` installs them); nothing here is a fake.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trustme

START_TIMEOUT = 20.0


class ServerFailed(Exception):
    """A server did not start; the message says why (its log's tail included)."""


@dataclass
class Servers:
    """Running ``redis-server`` processes, stopped by ``stop``."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass(frozen=True)
class TlsServer:
    """A TLS-only server: its port, the CA that signed its certificate (for 127.0.0.1 only,
    so ``localhost`` is a host name mismatch), another CA, a client certificate and the ACL
    user the default user is replaced by."""

    port: int
    ca_file: Path
    other_ca_file: Path
    client_cert_file: Path
    client_key_file: Path
    username: str
    password: str


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (held together while chosen, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_cluster(workdir: Path, servers: Servers) -> str:
    """Three masters with ``--cluster-enabled yes`` joined by ``redis-cli --cluster create``
    (no replicas); returns a seed node's URL once every slot is served."""
    ports = free_ports(6)  # three clients' and three cluster bus ports
    for port, bus in zip(ports[:3], ports[3:], strict=True):
        node = workdir / f"node-{port}"
        node.mkdir()
        _start(
            servers,
            node,
            port,
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            str(bus),
            "--cluster-config-file",
            str(node / "nodes.conf"),
            "--cluster-node-timeout",
            "2000",
        )
    created = subprocess.run(
        [
            _binary("redis-cli"),
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in ports[:3]),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if created.returncode != 0:
        raise ServerFailed(f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}")
    _wait_until(lambda: all(_cluster_ok(p) for p in ports[:3]), "the cluster state ok")
    return f"redis://127.0.0.1:{ports[0]}/0"


def start_tls(workdir: Path, servers: Servers, client_certificates: str = "optional") -> TlsServer:
    """One server listening with TLS only, its default user off and one ACL user on.
    ``client_certificates``: ``optional`` (verified when one is given) or ``yes`` (required)."""
    ca, other = trustme.CA(), trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("notifier.client")
    files = {
        "ca.pem": ca.cert_pem,
        "other-ca.pem": other.cert_pem,
        "server.pem": server_cert.cert_chain_pems[0],
        "server.key": server_cert.private_key_pem,
        "client.pem": client_cert.cert_chain_pems[0],
        "client.key": client_cert.private_key_pem,
    }
    for name, blob in files.items():
        blob.write_to_path(str(workdir / name))
    password = secrets.token_urlsafe(16)
    (port,) = free_ports(1)
    _start(
        servers,
        workdir,
        0,  # no plain TCP port
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(workdir / "server.pem"),
        "--tls-key-file",
        str(workdir / "server.key"),
        "--tls-ca-cert-file",
        str(workdir / "ca.pem"),
        "--tls-auth-clients",
        client_certificates,
        "--user",
        "default",
        "off",
        "--user",
        "notifier",
        "on",
        f">{password}",
        "~*",
        "+@all",
        wait_port=port,
    )
    return TlsServer(
        port=port,
        ca_file=workdir / "ca.pem",
        other_ca_file=workdir / "other-ca.pem",
        client_cert_file=workdir / "client.pem",
        client_key_file=workdir / "client.key",
        username="notifier",
        password=password,
    )


def _start(
    servers: Servers, workdir: Path, port: int, *options: str, wait_port: int | None = None
) -> None:
    log = workdir / "redis.log"
    process = subprocess.Popen(
        [
            _binary("redis-server"),
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
            "--logfile",
            str(log),
            *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    servers.processes.append(process)
    listening = wait_port or port

    def ready() -> bool:
        if process.poll() is not None:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise ServerFailed(f"redis-server exited with {process.returncode}:\n{tail}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", listening)) == 0

    _wait_until(ready, f"redis-server listening on {listening}")


def _cluster_ok(port: int) -> bool:
    info = subprocess.run(
        [_binary("redis-cli"), "-p", str(port), "cluster", "info"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return "cluster_state:ok" in info.stdout


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise ServerFailed(f"no {what} within {START_TIMEOUT}s")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServerFailed(f"{name} is not installed: run scripts/bootstrap --for-tests")
    return path
