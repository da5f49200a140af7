"""The 0.8x target as CPU per email: what the worker spends, what the target allows, and how
much of the allowance the hot-path steps take when each is measured alone.

All figures come from one run's results (parts ``e2e``, ``baselines`` and ``micro``):
- the worker: its CPU while sending over the emails sent;
- the allowance: the aiosmtplib ceiling's CPU per email over 0.8 (both run on one core, so
  at 0.8x of the ceiling's rate the worker may spend that much);
- the steps: the micro benchmarks' figures (synchronous steps timed alone, where wall time is
  CPU) and two baselines' CPU per item, each weighted by how often it runs per email in this
  workload (an SMS for about 60% of emails, 1.18 records an email).

What the allowance leaves after the steps is what the rest of the worker may cost at 0.8x:
the pipeline's own code, per-record tasks, scheduling between the steps, offset bookkeeping,
GC, and whatever each step costs more in the worker than alone (caches shared with everything
else). Some loop overhead is inside the steps already: the SMTP path and Kafka baselines are
whole processes with their own loop, and the SMS request is timed on asyncio's loop.
The parts run minutes apart, and this machine's speed drifts by 20% within a run, so read the
figures to about that. ``python -m bench.budget bench/results/NAME.json`` prints it for a
run's JSON (runs from ac56929 on).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import TARGET_SMTP_CEILING_SHARE

# the figures weighed per email, as bench/micro.py names them
DECODE = "decode (json + pydantic)"
PLAN = "plan (policy + phonenumbers)"
RENDER_EMAIL = "render email (jinja2 + babel)"
RENDER_SMS = "render SMS"
BUILD_8BIT = "worker's message build, 8bit bodies (server has 8BITMIME)"
LOG_LINE = "one log line (the processor chain, to stderr's text stream, now)"
SMS_REQUEST = "SMS request, worker HttpClient (now)"
STORE_ACCEPT = "SQLite store statements: an event's load and accept, and their commit (CPU)"
STORE_OUTCOME = "SQLite store statements: one channel's outcome and its share of a commit (CPU)"


@dataclass(frozen=True)
class Step:
    name: str
    figure: str  # a micro benchmark's name, or a baseline's ("baseline:NAME")
    per: str  # emails, records, sms, notifications or lines: how many per email


STEPS = (
    Step("decode", DECODE, "records"),
    Step("plan", PLAN, "records"),
    Step("render the email", RENDER_EMAIL, "emails"),
    Step("render the SMS", RENDER_SMS, "sms"),
    Step("build the message", BUILD_8BIT, "emails"),
    Step("SMTP transaction (the worker's path alone)", "baseline:aiosmtplib-worker-path", "emails"),
    Step("SMS request", SMS_REQUEST, "sms"),
    Step("store: load and accept, a record", STORE_ACCEPT, "records"),
    Step("store: an outcome, a notification", STORE_OUTCOME, "notifications"),
    Step("log lines: an outcome a record, one a notification", LOG_LINE, "lines"),
    Step("Kafka consumption", "baseline:kafka", "records"),
)


@dataclass(frozen=True)
class Row:
    us: float
    label: str


def rows(results: dict[str, Any]) -> list[Row]:
    """The budget's lines; ``KeyError`` names what the run lacks."""
    e2e, baselines, costs = results["e2e"], results["baselines"], results["micro"]
    emails = e2e["expected"]["emails"]
    per_email = {
        "emails": 1.0,
        "records": e2e["expected"]["records"] / emails,
        "sms": e2e["expected"]["sms"] / emails,
    }
    per_email["notifications"] = 1.0 + per_email["sms"]
    per_email["lines"] = per_email["records"] + per_email["notifications"]
    worker = e2e["cpu_busy"] * 1e6 / e2e["emails_per_s"]
    ceiling = _cpu_us(baselines["aiosmtplib"])
    allowed = ceiling / TARGET_SMTP_CEILING_SHARE
    out = [
        Row(worker, f"the worker end to end, at {e2e['emails_per_s']:,.0f} emails/s"),
        Row(ceiling, "aiosmtplib's sendmail alone (the ceiling)"),
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
    """CPU per counted item of a baseline: its process's CPU, or one core's time when the run
    did not record it (a baseline runs flat out on one core)."""
    cpu = ceiling.get("cpu_seconds")
    if cpu is None:
        return 1e6 / float(ceiling["rate"])
    return float(cpu) * 1e6 / ceiling["count"]


def lines(results: dict[str, Any]) -> list[str]:
    """The budget as printed lines, or one line saying what the run lacks for it."""
    try:
        budget = rows(results)
    except KeyError as exc:
        return [f"CPU per email: not computed, the run has no {exc.args[0]!r}"]
    except ZeroDivisionError:
        return ["CPU per email: not computed, the run sent no email"]
    return ["CPU per email (µs):", *(f"  {r.us:>8,.0f}  {r.label}" for r in budget)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__)
    parser.add_argument("results", type=Path, help="a run's JSON (bench/results/*.json)")
    args = parser.parse_args(argv)
    print("\n".join(lines(json.loads(args.results.read_text())["results"])))


if __name__ == "__main__":
    main()
