"""The DEDUP_REDIS_* settings: a bad combination is one line naming the variable (exit 2 from
the command line), and a password is never part of the message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_settings import SetEnv, clean_environ, env, problems_of
from worker.settings import load_settings

__all__ = ["env"]  # the fixture, used by name


@pytest.mark.parametrize(
    ("values", "line"),
    [
        (
            {"DEDUP_URL": "redis://r:6379/0", "DEDUP_REDIS_CA_FILE": "/nonexistent/ca.pem"},
            "DEDUP_REDIS_CA_FILE: '/nonexistent/ca.pem' is not a file (got '/nonexistent/ca.pem')",
        ),
        (
            {"DEDUP_URL": "redis://r:6379/0", "DEDUP_REDIS_CA_FILE": "{file}"},
            "DEDUP_REDIS_CA_FILE: needs a rediss:// DEDUP_URL (TLS)",
        ),
        (
            {"DEDUP_REDIS_CLUSTER": "true"},
            "DEDUP_REDIS_CLUSTER: needs a redis:// or rediss:// DEDUP_URL",
        ),
        (
            {"DEDUP_URL": "rediss://r:6379", "DEDUP_REDIS_CERT_FILE": "{file}"},
            "DEDUP_REDIS_CERT_FILE and DEDUP_REDIS_KEY_FILE must be set together",
        ),
        (
            {"DEDUP_URL": "rediss://u:pw1@r:6379", "DEDUP_REDIS_PASSWORD": "pw2"},
            "DEDUP_REDIS_PASSWORD: DEDUP_URL has one too; set it in one place",
        ),
        (
            {"DEDUP_URL": "rediss://r:6379", "DEDUP_REDIS_USERNAME": "notifier"},
            "DEDUP_REDIS_USERNAME: needs DEDUP_REDIS_PASSWORD",
        ),
        (
            {"DEDUP_URL": "redis://r:6379/2", "DEDUP_REDIS_CLUSTER": "yes"},
            "DEDUP_URL: 'redis://r:6379/2': a Redis Cluster has database 0 only",
        ),
        (
            {"DEDUP_URL": "redis://r:6379", "DEDUP_REDIS_CLUSTER": "1", "DEDUP_KEY_PREFIX": "{a}"},
            "DEDUP_KEY_PREFIX: no { or } with DEDUP_REDIS_CLUSTER (the store sets its own hash "
            "tags) (got '{a}')",
        ),
        (
            {"DEDUP_URL": "redis://r:99999/0"},
            "DEDUP_URL: 'redis://r:99999/0' has an invalid port",
        ),
        (
            {"DEDUP_URL": "rediss://:s3cret@r:port/0"},
            "DEDUP_URL: 'rediss://:***@r:port/0' has an invalid port",
        ),
        (
            {"DEDUP_URL": "rediss://u:s3/cret@r:6379/0"},  # a / the URL should have encoded
            "DEDUP_URL: 'rediss://u:***@r:6379/0' has an invalid port",
        ),
        (
            {"DEDUP_URL": "redis+sentinel://u:s3cret@r/0"},
            "DEDUP_URL: 'redis+sentinel://u:***@r/0': use sqlite:///path/file.db, memory:// or "
            "redis://host:port/db (got 'redis+sentinel://u:***@r/0')",
        ),
        (
            {"DEDUP_URL": "redis://r:6379", "DEDUP_REDIS_TIMEOUT": "0"},
            "DEDUP_REDIS_TIMEOUT: Input should be greater than 0 (got '0')",
        ),
    ],
)
def test_a_bad_redis_setting_is_one_line_naming_it(
    env: SetEnv, tmp_path: Path, values: dict[str, str], line: str
) -> None:
    """Each inconsistent Redis setting gives exactly its line, the URL's password masked."""
    a_file = tmp_path / "some.pem"
    a_file.write_text("-")
    given = {k: v.replace("{file}", str(a_file)) for k, v in values.items()}
    assert problems_of(env, **given) == [line]


def test_the_redis_settings_are_read(env: SetEnv, tmp_path: Path) -> None:
    """A TLS cluster with an ACL user and a client certificate: every setting arrives, the
    password as a secret."""
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    for path in files.values():
        path.write_text("-")
    env(
        DEDUP_URL="rediss://redis.internal:6379/0",
        DEDUP_REDIS_CLUSTER="true",
        DEDUP_REDIS_USERNAME="notifier",
        DEDUP_REDIS_PASSWORD="s3cret",
        DEDUP_REDIS_CA_FILE=str(files["ca"]),
        DEDUP_REDIS_CERT_FILE=str(files["cert"]),
        DEDUP_REDIS_KEY_FILE=str(files["key"]),
        DEDUP_REDIS_TIMEOUT="2.5",
    )
    dedup = load_settings().dedup
    assert dedup.redis_cluster is True
    assert dedup.redis_username == "notifier"
    assert dedup.redis_password is not None
    assert dedup.redis_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(dedup)
    assert (dedup.redis_ca_file, dedup.redis_cert_file, dedup.redis_key_file) == (
        files["ca"],
        files["cert"],
        files["key"],
    )
    assert dedup.redis_timeout == 2.5


def test_the_command_line_exits_2_without_the_password() -> None:
    """``python -m worker run`` with a bad Redis setting prints one line naming the variable,
    exits 2, and shows no password even when the URL holds one."""
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env={
            **clean_environ(),
            "DEDUP_URL": "rediss://notifier:s3cret@r:6379/3",
            "DEDUP_REDIS_CLUSTER": "true",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "configuration error: DEDUP_URL: 'rediss://notifier:***@r:6379/3': a Redis Cluster has "
        "database 0 only\n"
    )
    assert "s3cret" not in done.stdout + done.stderr
