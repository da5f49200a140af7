"""The deploy files say what the code does: every variable they set is a setting the worker
reads, the port they probe and scrape is the one it serves, the paths are its probe paths, the
health command exists, and the grace periods outlast the drain."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker import probes
from worker.cli import _parser
from worker.metrics import Metrics
from worker.settings import _SECTIONS, AppSettings

ROOT = Path(__file__).resolve().parent.parent
PORT = AppSettings.model_fields["metrics_port"].default
GRACE = AppSettings.model_fields["shutdown_timeout"].default
PROBE_PATHS = {probes.METRICS_PATH, probes.LIVEZ_PATH, probes.READYZ_PATH}
# the image's own variables, for Python and pip, not the worker's
NOT_SETTINGS = re.compile(r"PYTHON|PIP_")


def setting_names() -> set[str]:
    """Every environment variable the worker's settings read."""
    names = set()
    for section in _SECTIONS.values():
        prefix = section.model_config.get("env_prefix", "")
        for name, field in section.model_fields.items():
            alias = field.validation_alias
            names.add(alias if isinstance(alias, str) else (prefix + name).upper())
    return names


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def dockerfile_env() -> dict[str, str]:
    """The ENV of the runtime stage."""
    runtime = dockerfile().split(" AS runtime", 1)[1]
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV ((?:.*\\\n)*.*)$", runtime, re.M):
        for pair in shlex.split(block.replace("\\\n", " ")):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def compose_worker() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    worker: dict[str, Any] = compose["services"]["worker"]
    return worker


def kubernetes() -> list[dict[str, Any]]:
    documents = []
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return documents


def the(kind: str, name: str = "shipment-notifier") -> dict[str, Any]:
    """The worker's own object of ``kind`` (redis.yaml has objects of the same kinds)."""
    (found,) = [d for d in kubernetes() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def worker_container() -> dict[str, Any]:
    statefulset = the("StatefulSet")
    (container,) = [
        c for c in statefulset["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"
    ]
    return container


@pytest.mark.parametrize(
    "where",
    ["Dockerfile", "compose.yaml", "ConfigMap", "Secret", "StatefulSet"],
)
def test_every_variable_set_is_a_setting_of_the_worker(where: str) -> None:
    """A misspelt variable would be ignored without a word: each one is a setting."""
    if where == "Dockerfile":
        names = {n for n in dockerfile_env() if not NOT_SETTINGS.match(n)}
    elif where == "compose.yaml":
        names = set(compose_worker()["environment"])
    elif where == "ConfigMap":
        names = set(the("ConfigMap")["data"])
    elif where == "Secret":
        names = set(the("Secret", "shipment-notifier-credentials")["stringData"])
    else:
        names = {e["name"] for e in worker_container()["env"]}
    assert names, f"{where} sets no variable"
    assert names <= setting_names(), names - setting_names()


def test_the_metrics_port_is_the_one_the_worker_serves() -> None:
    """METRICS_PORT's default is what the image exposes, compose publishes, and the pods
    name, probe and have scraped; where a file sets METRICS_PORT it sets that value."""
    assert re.search(rf"^EXPOSE {PORT}$", dockerfile(), re.M)
    assert dockerfile_env()["METRICS_PORT"] == str(PORT)
    worker = compose_worker()
    assert str(worker["environment"]["METRICS_PORT"]) == str(PORT)
    assert f"{PORT}:{PORT}" in worker["ports"]
    assert the("ConfigMap")["data"]["METRICS_PORT"] == str(PORT)
    container = worker_container()
    assert {"name": "metrics", "containerPort": PORT} in container["ports"]
    service = the("Service")
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(PORT)
    assert service["metadata"]["annotations"]["prometheus.io/path"] == probes.METRICS_PATH
    assert service["spec"]["ports"] == [{"name": "metrics", "port": PORT, "targetPort": "metrics"}]


def test_the_probes_ask_the_workers_probe_paths() -> None:
    """Liveness and start-up ask /livez, readiness /readyz, on the metrics port."""
    container = worker_container()
    asked = {
        probe: (container[probe]["httpGet"]["path"], container[probe]["httpGet"]["port"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert asked == {
        "startupProbe": (probes.LIVEZ_PATH, "metrics"),
        "livenessProbe": (probes.LIVEZ_PATH, "metrics"),
        "readinessProbe": (probes.READYZ_PATH, "metrics"),
    }
    assert {path for path, _ in asked.values()} <= PROBE_PATHS


def test_the_images_healthcheck_runs_the_health_command() -> None:
    """The HEALTHCHECK's command is ``python -m worker health``, a command the CLI has."""
    check = re.search(r"^HEALTHCHECK (.*\\\n)*\s*CMD (\[.*\])$", dockerfile(), re.M)
    assert check is not None
    command = yaml.safe_load(check.group(2))
    assert command[:4] == ["python", "-m", "worker", "health"]
    args = _parser().parse_args(command[3:])
    assert args.func.__name__ == "_health"


def test_grace_periods_outlast_the_drain() -> None:
    """SIGKILL comes after SHUTDOWN_TIMEOUT in every file, so the drain is not cut short."""
    statefulset = the("StatefulSet")
    assert statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > GRACE
    grace = compose_worker()["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > GRACE
    # the run command the Dockerfile documents, and the one scripts/image runs
    for text in (dockerfile(), (ROOT / "scripts" / "image").read_text(encoding="utf-8")):
        stop = re.search(r"--stop-timeout (\d+)", text)
        assert stop is not None and int(stop.group(1)) > GRACE


def test_the_store_volume_is_the_data_dir() -> None:
    """The SQLite store's volume is mounted where DATA_DIR points in the image."""
    data_dir = dockerfile_env()["DATA_DIR"]
    assert re.search(rf'^VOLUME \["{re.escape(data_dir)}"\]$', dockerfile(), re.M)
    assert f"notifier-data:{data_dir}" in compose_worker()["volumes"]


def served_sample_names() -> set[str]:
    """Every sample name a worker's scrape holds once each metric has a value."""
    m = Metrics()
    m.record_handled("t", "notified")
    m.sent("email", 0.1, 0.0)
    m.dead_letter("schema")
    m.store_call("load", 0.001)
    m.watch_lag(lambda: [("t", 0, 1)])
    m.watch_in_flight(lambda: 1)
    m.watch_retry_backlog(lambda: (1, 0.0))
    return {
        sample.name
        for family in text_string_to_metric_families(generate_latest(m.registry).decode())
        for sample in family.samples
    }


def test_the_dashboard_and_the_alerts_use_metrics_the_worker_serves() -> None:
    """Each shipment_notifier_* name in the Grafana dashboard's queries and in the alerts of
    docs/operations.md is one a scrape holds."""
    dashboard = json.loads((ROOT / "deploy/grafana/shipment-notifier.json").read_text("utf-8"))
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    operations = (ROOT / "docs/operations.md").read_text(encoding="utf-8")
    alerts = operations.split("## Alerts", 1)[1].split("\n## ", 1)[0]
    used = set(re.findall(r"shipment_notifier_[a-z_]+", "\n".join([*queries, alerts])))
    assert len(used) >= 8
    assert used <= served_sample_names(), used - served_sample_names()
