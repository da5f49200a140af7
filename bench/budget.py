"""The 0.8x target as CPU per email: what the worker spends, what the target allows, and how
much of the allowance the hot-path steps take when each is measured alone.

All figures come from one run's results (parts ``e2e``, ``baselines`` and ``micro``): the
worker's CPU per email is its CPU while sending over the emails sent; the allowance is one core's
second over 0.8 times the aiosmtplib ceiling's emails/s (the worker runs on one core, so at
0.8x it has that long per email); the steps are the micro benchmarks' figures, each weighted by
how often it runs per email in this workload (e.g. an SMS for 60% of emails). Whatever the
allowance leaves after the steps is what the rest of the worker may cost at 0.8x: asyncio
scheduling, per-record tasks, the pipeline's own code, offset bookkeeping, GC, and system calls
beyond those the steps make. ``python -m bench.budget bench/results/NAME.json`` prints it for
an earlier run.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import micro
from bench.report import TARGET_SMTP_CEILING_SHARE


@dataclass(frozen=True)
class Step:
    name: str
    figure: str  # the micro benchmark's key, or a baseline's name ("baseline:NAME")
    per: str  # records, sms, notifications, accepted, lines or emails (counted per email)


STEPS = (
    Step("decode", micro.DECODE, "records"),
    Step("plan", micro.PLAN, "records"),
    Step("render the email", micro.RENDER_EMAIL, "emails"),
    Step("render the SMS", micro.RENDER_SMS, "sms"),
    Step("build the message", micro.BUILD_8BIT, "emails"),
    Step("SMTP transaction (the worker's path alone)", "baseline:aiosmtplib-worker-path", "emails"),
    Step("SMS request", micro.SMS_REQUEST, "sms"),
    Step("store statements and commits", micro.STORE_STATEMENTS, "accepted"),
    Step("log lines (an outcome a record, a line a notification)", micro.LOG_LINE, "lines"),
    Step("Kafka consumption", "baseline:kafka", "records"),
)


@dataclass(frozen=True)
class Row:
    us: float
    label: str


def rows(results: dict[str, Any]) -> list[Row]:
    """The budget's lines; ``KeyError`` when the run lacks a part it needs."""
    e2e, baselines, costs = results["e2e"], results["baselines"], results["micro"]
    emails = e2e["expected"]["emails"]
    per_email = {
        "emails": 1.0,
        "records": e2e["expected"]["records"] / emails,
        "sms": e2e["expected"]["sms"] / emails,
        "accepted": e2e["outcomes"]["notified"] / emails,
    }
    per_email["notifications"] = 1.0 + per_email["sms"]
    per_email["lines"] = per_email["records"] + per_email["notifications"]
    worker = e2e["cpu_busy"] * 1e6 / e2e["emails_per_s"]
    ceiling = baselines["aiosmtplib"]
    allowed = 1e6 / (TARGET_SMTP_CEILING_SHARE * ceiling["rate"])
    out = [
        Row(worker, f"the worker end to end, at {e2e['emails_per_s']:,.0f} emails/s"),
        Row(_cpu_us(ceiling), "aiosmtplib's sendmail alone (the ceiling)"),
        Row(allowed, f"what {TARGET_SMTP_CEILING_SHARE}x of the ceiling allows the worker"),
    ]
    steps = 0.0
    for step in STEPS:
        if step.figure.startswith("baseline:"):
            each = _cpu_us(baselines[step.figure.removeprefix("baseline:")])
        else:
            each = costs[step.figure]
        times = per_email[step.per]
        steps += each * times
        out.append(Row(each * times, f"  {step.name}: {each:,.1f} x {times:.2f}"))
    out += [
        Row(steps, "the steps measured alone, together"),
        Row(allowed - steps, "left by the target for the rest (see bench/budget.py)"),
        Row(worker - steps, "the rest now"),
    ]
    return out


def _cpu_us(ceiling: dict[str, Any]) -> float:
    """CPU per counted item of a baseline: its process's CPU when recorded, else one core's
    time (the baselines run flat out on one core)."""
    if ceiling.get("cpu_seconds"):
        return float(ceiling["cpu_seconds"]) * 1e6 / ceiling["count"]
    return 1e6 / float(ceiling["rate"])


def lines(results: dict[str, Any]) -> list[str]:
    """The budget as printed lines, or none when the run lacks a part it needs."""
    try:
        budget = rows(results)
    except (KeyError, ZeroDivisionError, TypeError):
        return []
    return ["CPU per email (µs):", *(f"  {r.us:>8,.0f}  {r.label}" for r in budget)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__)
    parser.add_argument("results", type=Path, help="a full run's JSON (bench/results/*.json)")
    args = parser.parse_args(argv)
    data = json.loads(args.results.read_text())
    printed = lines(data["results"])
    if not printed:
        parser.error(f"{args.results}: needs the e2e, baselines and micro parts")
    print("\n".join(printed))


if __name__ == "__main__":
    main()
