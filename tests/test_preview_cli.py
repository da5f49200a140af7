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
from worker.policy import STATUSES
from worker.preview import CheckFailure, check, long_sample_event, sample_event, sms_costs
from worker.render import Renderer
from worker.sms_text import SmsBudget, measure

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
SHOP = Shop(name="Our shop")

BreakTemplate = Callable[[str, str], Renderer]


def worker_cli(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """``python -m worker ARGS`` from the repository root, with none of the caller's settings
    but ``settings``."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=ROOT,
        env={**clean_environ(), "PYTHONIOENCODING": "utf-8", **settings},
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


RENDERS_OK = (
    "192/192 renders ok: 12 statuses x 2 channels x locales de, en, ko, vi x full and minimal data"
)


def sms_table(stdout: str) -> dict[tuple[str, str], str]:
    """The segments table ``check`` prints, by (status, locale): e.g. "2 gsm7"."""
    lines = stdout.splitlines()
    header = lines.index("status                de        en        ko        vi")
    table = {}
    for line in lines[header + 1 : header + 1 + len(STATUSES)]:
        status, *cells = line.split()
        locales = ("de", "en", "ko", "vi")
        for locale, segments, encoding in zip(locales, cells[::2], cells[1::2], strict=True):
            table[status, locale] = f"{segments} {encoding}"
    return table


def expected_table(renderer: Renderer) -> dict[tuple[str, str], str]:
    """What each SMS template costs with the long sample fields, measured here."""
    return {
        (status, locale): f"{cost.segments} {cost.encoding}"
        for locale in ("de", "en", "ko", "vi")
        for status in STATUSES
        for cost in [measure(renderer.sms_as_written(long_sample_event(status, locale)).text)]
    }


def test_check_renders_every_combination_and_prints_what_each_sms_costs() -> None:
    """``python -m worker check`` renders all 192 combinations cleanly, prints the segments and
    encoding of every SMS template with long fields (all within the default four segments)
    and exits 0."""
    result = worker_cli("check")
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0] == RENDERS_OK
    assert lines[2] == (
        "SMS segments and encoding with long fields, every field whole "
        "(SMS_MAX_SEGMENTS=4, SMS_UNACCENTED=none):"
    )
    assert sms_table(result.stdout) == expected_table(Renderer(TEMPLATES, "en", SHOP))
    assert sms_table(result.stdout)["delivered", "vi"] == "4 ucs2"
    assert "FAIL" not in result.stdout


def test_check_fails_on_each_sms_template_over_the_segment_budget() -> None:
    """With SMS_MAX_SEGMENTS=3, every template whose long-field SMS needs four segments gets
    one FAIL line naming it, and ``check`` exits 1."""
    result = worker_cli("check", SMS_MAX_SEGMENTS="3")
    assert (result.returncode, result.stderr) == (1, "")
    renderer = Renderer(TEMPLATES, "en", SHOP, sms_budget=SmsBudget(3))
    over = [row for row in sms_costs(renderer) if row.segments > 3]
    assert over
    expected = [
        f"FAIL {row.locale}/sms/{row.status}: {row.segments} segments ({row.encoding}) with "
        "long fields, over SMS_MAX_SEGMENTS=3"
        for row in over
    ]
    assert [line for line in result.stdout.splitlines() if line.startswith("FAIL")] == expected
    assert "FAIL vi/sms/delivered: 4 segments (ucs2) with long fields, over SMS_MAX_SEGMENTS=3" in (
        expected
    )


def test_check_with_sms_unaccented_counts_vietnamese_as_gsm7() -> None:
    """SMS_UNACCENTED=vi: every Vietnamese SMS template is GSM-7 and costs fewer segments; the
    other locales cost what they did."""
    plain = worker_cli("check", SMS_UNACCENTED="vi")
    accented = worker_cli("check")
    assert plain.returncode == 0
    assert "SMS_UNACCENTED=vi" in plain.stdout
    with_marks, without = sms_table(accented.stdout), sms_table(plain.stdout)
    for (status, locale), cell in without.items():
        if locale == "vi":
            assert cell.endswith("gsm7")
            assert int(cell.split()[0]) < int(with_marks[status, locale].split()[0])
        else:
            assert cell == with_marks[status, locale]


def test_check_refuses_an_unaccented_locale_without_templates() -> None:
    """SMS_UNACCENTED naming a locale without templates is a start-up error (exit 2)."""
    result = worker_cli("check", SMS_UNACCENTED="vi,fr")
    assert result.returncode == 2
    assert result.stderr.startswith("start-up error: SMS_UNACCENTED fr: no templates in ")


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
