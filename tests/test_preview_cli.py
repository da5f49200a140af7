"""The template tools at the command line: ``check``, ``preview`` and ``schema``, which need no
Kafka, plus ``worker.preview.check`` on deliberately broken templates."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_settings import clean_environ  # the settings tests own the variable list
from worker.events import Shop
from worker.preview import CheckFailure, check, sample_event
from worker.render import Renderer

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
SHOP = Shop(name="Our shop")

BreakTemplate = Callable[[str, str], Renderer]


def worker_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m worker ARGS`` from the repository root, with none of the caller's settings."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=ROOT,
        env={**clean_environ(), "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )


@pytest.fixture
def break_template(tmp_path: Path) -> BreakTemplate:
    """Factory: copies the templates under tmp_path (removed afterwards), replaces one file's
    text, and returns a Renderer over the copy."""

    def make(relative: str, text: str) -> Renderer:
        templates = Path(shutil.copytree(TEMPLATES, tmp_path / "templates"))
        (templates / relative).write_text(text, encoding="utf-8")
        return Renderer(templates, "en", SHOP)

    return make


def test_check_renders_every_combination() -> None:
    """``python -m worker check`` renders all 192 combinations cleanly and exits 0."""
    result = worker_cli("check")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "192/192 renders ok: 12 statuses x 2 channels x locales de, en, ko, vi x full and "
        "minimal data\n"
    )


def test_check_reports_an_undefined_variable(break_template: BreakTemplate) -> None:
    """A template using an undefined name fails for exactly its locale, status and channel."""
    renderer = break_template(
        "de/sms/delayed.txt",
        '{% extends "de/sms/_layout.txt" %}{% block message %}{{ parcel_weight }}{% endblock %}',
    )
    error = "de/sms/delayed.txt: 'parcel_weight' is undefined"
    assert check(renderer) == (
        192,
        [
            CheckFailure("de", "delayed", "sms", "full", error),
            CheckFailure("de", "delayed", "sms", "minimal", error),
        ],
    )


def test_check_reports_a_none_printed_into_the_text(break_template: BreakTemplate) -> None:
    """An optional field printed without a guard shows up as 'None' with minimal data."""
    renderer = break_template(
        "ko/email/shipped.txt",
        '{% extends "ko/email/_layout.txt" %}{% block lead %}{{ shipment.carrier }}{% endblock %}',
    )
    assert check(renderer) == (
        192,
        [CheckFailure("ko", "shipped", "email", "minimal", "text contains 'None'")],
    )


def test_preview_prints_a_vietnamese_sms() -> None:
    """``preview --status delivered --locale vi --channel sms`` prints the Vietnamese SMS."""
    result = worker_cli("preview", "--status", "delivered", "--locale", "vi", "--channel", "sms")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "Cửa hàng Sen: Đơn ORD-5521 đã được giao thành công tại Hà Nội. Cảm ơn bạn đã mua sắm!\n"
        "Theo dõi: https://track.example/VN123456789\n"
    )


def test_preview_writes_the_html_part_to_a_file(tmp_path: Path) -> None:
    """``preview --html-out F`` writes the HTML part to F and prints the subject and text."""
    out = tmp_path / "delivered.html"
    result = worker_cli(
        "preview", "--status", "delivered", "--locale", "en", "--html-out", str(out)
    )
    assert (result.returncode, result.stderr) == (0, "")
    expected = Renderer(TEMPLATES, "en", SHOP).email(sample_event("delivered", "en"))
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>\n")
    assert html == expected.html
    assert result.stdout == (
        f"Subject: {expected.subject}\n\n{expected.text}\n(HTML part written to {out})\n"
    )


def test_schema_matches_the_committed_file() -> None:
    """``python -m worker schema`` prints exactly docs/event.schema.json, so it cannot go stale."""
    result = worker_cli("schema")
    assert (result.returncode, result.stderr) == (0, "")
    committed = (ROOT / "docs" / "event.schema.json").read_text(encoding="utf-8")
    assert result.stdout == committed
    assert json.loads(committed)["title"] == "ShipmentStatusEvent"
