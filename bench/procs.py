"""Every process the benchmark starts, and how each one is stopped.

Children are started in their own session (a Ctrl-C in the terminal reaches only the
orchestrator, which then stops them in order) and with a parent-death signal, so that even a
killed orchestrator does not leave a worker or sink running. The Kafka broker is started and
stopped through ``scripts/kafka`` with a state directory of the run's own.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
_PR_SET_PDEATHSIG = 1
_COUNTER = re.compile(rb"mesg=(\d+)")


class BenchError(Exception):
    """A part of the benchmark could not complete (said in one line)."""


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the orchestrator dies."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    stdout: IO[Any] | int | None = subprocess.DEVNULL,
    stderr: IO[Any] | int | None = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 30) -> int:
    """Signal ``process``, wait up to ``grace`` seconds, then kill it; return its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Kafka:
    """A throwaway broker from ``scripts/kafka`` with its own state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.bootstrap = ""

    def start(self, timeout: float = 120) -> str:
        result = subprocess.run(
            [str(ROOT / "scripts" / "kafka"), "start", "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise BenchError(f"Kafka did not start: {result.stderr.strip()[-2000:]}")
        self.bootstrap = result.stdout.strip().splitlines()[-1]
        return self.bootstrap

    def stop(self) -> None:
        subprocess.run(
            [str(ROOT / "scripts" / "kafka"), "stop", "--state-dir", str(self.state_dir)],
            capture_output=True,
            timeout=60,
            check=False,
        )


class PostfixSmtpSink:
    """postfix's ``smtp-sink`` (C): accepts and discards; its ``-c`` counters are read back
    from its stdout file to know how many messages it accepted."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self._counter_file = workdir / "smtp-sink.out"
        self._offset = 0
        self._count = 0
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> PostfixSmtpSink:
        binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        user = ["-u", "nobody"] if os.geteuid() == 0 else []  # required when run as root
        # -c counters, -4 IPv4, -a no AUTH announced, -m max parallel sessions, backlog last
        command = [binary, "-c", "-4", "-a", *user, "-m", "1024", f"127.0.0.1:{self.port}", "1024"]
        with open(self._counter_file, "wb") as out:
            self._process = spawn(command, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self._process, "smtp-sink")
        return self

    def count(self) -> int:
        """Messages accepted so far (the counter is updated at each end of DATA)."""
        with open(self._counter_file, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        cut = chunk.rfind(b"\r")
        if cut >= 0:
            found = _COUNTER.findall(chunk[:cut])
            if found:
                self._count = int(found[-1])
            self._offset += cut + 1
        return self._count

    def stop(self) -> None:
        if self._process is not None:
            stop(self._process, grace=5)


class PySinks:
    """``bench/sinks.py`` in its own process: an SMTP sink (optionally slow) and the SMS sink."""

    def __init__(self, smtp_delay: float = 0.0, sms_delay: float = 0.0) -> None:
        self._args = ["--smtp-delay", str(smtp_delay), "--sms-delay", str(sms_delay)]
        self._process: subprocess.Popen[bytes] | None = None
        self.smtp_port = 0
        self.http_port = 0

    def start(self, timeout: float = 20) -> PySinks:
        self._process = spawn(
            [PYTHON, "-m", "bench.sinks", *self._args], stdout=subprocess.PIPE, stderr=None
        )
        line = _read_line(self._process, timeout)
        found = re.match(r"ready smtp=(\d+) http=(\d+)", line)
        if not found:
            raise BenchError(f"bench.sinks did not start: {line!r}")
        self.smtp_port, self.http_port = int(found.group(1)), int(found.group(2))
        return self

    @property
    def sms_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/sms"

    def _get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = self._get("/stats")
        return stats

    def accepts(self) -> list[tuple[str, float]]:
        return [(str(m), float(t)) for m, t in self._get("/accepts")]

    def stop(self) -> None:
        if self._process is not None:
            stop(self._process, grace=5)


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise BenchError(f"no output within {timeout:g} s from pid {process.pid}")
    return process.stdout.readline().decode(errors="replace").strip()


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of ``pid`` in MB, from /proc; (0, 0) once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0, 0.0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)

    def mb(name: str) -> float:
        return int(fields.get(name, "0 kB").split()[0]) / 1024

    return mb("VmRSS"), mb("VmHWM")
