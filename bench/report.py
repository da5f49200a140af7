"""Turning measurements into figures: latency percentiles, the RSS series summary, the JSON
document, the table against the targets, and the plot."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from bench.worker_run import WorkerRun

TARGET_EMAILS_PER_S = 2000
TARGET_SMTP_CEILING_SHARE = 0.8
TARGET_DELAYED_EMAILS_PER_S = 1000
TARGET_P99_MS = 50
TARGET_RSS_MB = 150


def representative_email() -> bytes:
    """One rendered email as the worker sends it (a Vietnamese 'shipped': non-ASCII subject
    and name), as bytes: what the SMTP baselines send over and over."""
    from bench.events import EventFactory
    from bench.micro import wire_bytes
    from worker.app import build_renderer
    from worker.channels import Outgoing
    from worker.channels.smtp import SmtpSender
    from worker.events import Event, decode
    from worker.settings import load_settings

    settings = load_settings()
    renderer = build_renderer(settings)
    event = decode(EventFactory("sample", seed=3).batch(0, 1)[0][0][1])
    assert isinstance(event, Event) and event.customer.email
    mail = renderer.email(event)
    locale = renderer.locale_for(event.customer.locale)
    outgoing = Outgoing("email", event.event_id, event.status, locale, event.customer.email,
                        event.customer.name, mail.text, mail.subject, mail.html)  # fmt: skip
    return wire_bytes(SmtpSender(settings.smtp, settings.email), outgoing)


def latency(sent_at: dict[str, float], accepts: list[tuple[str, float]]) -> dict[str, Any]:
    """Publish -> SMTP accept per email, matched through the Message-ID (derived from the
    event id by the worker's ``idempotency_key``)."""
    from worker.channels import idempotency_key

    by_key = {idempotency_key(event_id, "email"): t for event_id, t in sent_at.items()}
    delays = sorted(
        (accepted - by_key[mid.partition("@")[0]]) * 1000
        for mid, accepted in accepts
        if mid.partition("@")[0] in by_key
    )
    if not delays:
        raise ValueError("no accepted email matched a published event")
    return {
        "emails": len(delays),
        "published": len(sent_at),
        # how long the worker still sent after the last publish: > 1 s means it fell behind
        "drain_after_last_publish_s": round(max(t for _, t in accepts) - max(sent_at.values()), 2),
        "p50_ms": round(_percentile(delays, 50), 1),
        "p95_ms": round(_percentile(delays, 95), 1),
        "p99_ms": round(_percentile(delays, 99), 1),
        "max_ms": round(delays[-1], 1),
        "mean_ms": round(statistics.fmean(delays), 1),
        "histogram_ms": [round(d, 1) for d in delays[:: max(1, len(delays) // 2000)]],
    }


def _percentile(sorted_values: list[float], pct: float) -> float:
    index = min(len(sorted_values) - 1, round(pct / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


MIN_RSS_SAMPLES = 10  # in each half, about two teeth of the sawtooth


def rss_summary(run: WorkerRun) -> dict[str, Any]:
    """Peak RSS and whether it is flat: RSS at each tenth of the run's progress, and the
    growth of the second half's peak over the first half's from 10% on (flat: under 5 MB or
    5 %). Peaks, not single samples: RSS saws by about 8 MB as the heap and the store's caches
    fill and are reused, so one sample at 50% may sit at the bottom of a tooth."""
    total = run.expected.notifications
    sending = [s for s in run.samples if s.notifications > 0 and s.rss_mb > 0]
    if not sending:
        raise ValueError("no RSS samples while sending")
    deciles = {}
    for tenth in range(1, 11):
        reached = [s for s in sending if s.notifications >= total * tenth / 10]
        sample = reached[0] if reached else sending[-1]
        deciles[f"{tenth * 10}%"] = round(sample.rss_mb, 1)
    first = [s.rss_mb for s in sending if total / 10 <= s.notifications < total / 2]
    second = [s.rss_mb for s in sending if s.notifications >= total / 2]
    if min(len(first), len(second)) < MIN_RSS_SAMPLES:  # too few to hold whole teeth
        growth = None
    else:
        growth = round(max(second) - max(first), 1)
    return {
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "rss_by_progress_mb": deciles,
        "second_half_peak_growth_mb": growth,
        "flat": None if growth is None else growth <= max(5.0, 0.05 * max(first)),
        "samples": len(run.samples),
    }


def build(
    args: argparse.Namespace, sizes: Any, results: dict[str, Any], failures: dict[str, str],
    elapsed: float, load_before: tuple[float, float, float],
) -> dict[str, Any]:  # fmt: skip
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "worker_revisions": sorted(_revisions(results)),
        "mode": "smoke" if args.smoke else "full",
        "name": args.name,
        "sizes": sizes.__dict__,
        "tuning": {
            "fast": {"MAX_IN_FLIGHT": args.max_in_flight, "SMTP_POOL_SIZE": args.pool_size},
            "delayed": {
                "MAX_IN_FLIGHT": args.delayed_max_in_flight,
                "SMTP_POOL_SIZE": args.delayed_pool_size,
                "SMS_POOL_SIZE": args.delayed_sms_pool_size,
            },
        },
        "seconds": round(elapsed, 1),
        "results": results,
        "failures": failures,
        "figures": figures(results),
    }


def _revisions(results: Any) -> set[str]:
    """Every worker revision a run measured (the worker may change during a long run)."""
    if isinstance(results, dict):
        found = {results["revision"]} if isinstance(results.get("revision"), str) else set()
        return found.union(*(_revisions(v) for v in results.values()))
    return set()


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's rows: figure, value, unit, target and the ratio the target is about."""
    e2e = results.get("e2e") or {}
    base = results.get("baselines") or {}
    rows: list[dict[str, Any]] = []

    def row(name: str, value: Any, unit: str, target: str = "", ratio: Any = None,
            ok: bool | None = None) -> None:  # fmt: skip
        rows.append({"figure": name, "value": value, "unit": unit, "target": target,
                     "ratio": ratio, "ok": ok})  # fmt: skip

    emails = e2e.get("emails_per_s", 0.0)
    if e2e:
        row("1 end-to-end", e2e["notifications_per_s"], "notifications/s")
        row("1 end-to-end, email", emails, "emails/s", f">= {TARGET_EMAILS_PER_S}",
            ok=emails >= TARGET_EMAILS_PER_S)  # fmt: skip
        row("1 worker start-up", e2e["startup_s"], "s")
        row("1 worker CPU while sending", e2e.get("cpu_busy", 0.0), "cores of 2")
    for key, unit, mine in (
        ("kafka", "records/s", e2e.get("records_per_s")),
        ("aiosmtplib", "emails/s", emails),
        ("aiosmtplib-asyncio", "emails/s", emails),
        ("aiosmtplib-worker-path", "emails/s", emails),
        ("smtp-source", "emails/s", emails),
        ("naive", "notifications/s", e2e.get("notifications_per_s")),
    ):
        if key in base:
            ratio = _ratio(base[key]["rate"], mine)
            row(f"2 baseline {key}", base[key]["rate"], unit, "ratio = baseline / (1)", ratio)
    if "aiosmtplib" in base and emails:
        share = _ratio(emails, base["aiosmtplib"]["rate"])
        row("1 / aiosmtplib ceiling", share, "x", f">= {TARGET_SMTP_CEILING_SHARE}",
            ok=share is not None and share >= TARGET_SMTP_CEILING_SHARE)  # fmt: skip
    if "aiosmtplib-worker-path" in base and emails:
        row("1 / worker-path SMTP ceiling", _ratio(emails, base["aiosmtplib-worker-path"]["rate"]),
            "x", "the same, without sendmail's passes")  # fmt: skip
    if paired := results.get("paired"):
        each = "/".join(f"{r['ratio']:.2f}" for r in paired["rounds"])
        median = paired["median_emails_per_s"]
        row("1+2 paired rounds: worker, median", median, "emails/s",
            f">= {TARGET_EMAILS_PER_S}", ok=median >= TARGET_EMAILS_PER_S)  # fmt: skip
        row("1+2 paired: / aiosmtplib ceiling, median", paired["median_ratio"], "x",
            f">= {TARGET_SMTP_CEILING_SHARE} (rounds {each})",
            ok=paired["median_ratio"] >= TARGET_SMTP_CEILING_SHARE)  # fmt: skip
    _later_rows(results, row, e2e)
    return rows


def _later_rows(results: dict[str, Any], row: Any, e2e: dict[str, Any]) -> None:
    if delayed := results.get("delayed"):
        value = delayed["emails_per_s"]
        row("3 delayed sinks (100/200 ms), email", value, "emails/s",
            f">= {TARGET_DELAYED_EMAILS_PER_S}", _ratio(value, e2e.get("emails_per_s")),
            value >= TARGET_DELAYED_EMAILS_PER_S)  # fmt: skip
    if lat := results.get("latency"):
        for found in (lat, lat.get("low_rate")):
            if found:
                row(f"4 latency p50/p95/p99 at {found['rate']:g}/s",
                    f"{found['p50_ms']:.0f}/{found['p95_ms']:.0f}/{found['p99_ms']:.0f}", "ms",
                    f"p99 <= {TARGET_P99_MS} at 200/s" if found is lat else "",
                    ok=found["p99_ms"] <= TARGET_P99_MS if found is lat else None)  # fmt: skip
    if mem := results.get("memory"):
        events = mem["worker"]["expected"]["records"]
        row(
            f"5 peak RSS over {events:,} events",
            mem["peak_rss_mb"],
            "MB",
            f"<= {TARGET_RSS_MB}, flat",
            ok=mem["peak_rss_mb"] <= TARGET_RSS_MB and mem["flat"] is not False,
        )
        verdict = {True: "flat", False: "GROWING", None: "run too short to tell"}[mem["flat"]]
        growth = mem.get("second_half_peak_growth_mb")
        row("5 RSS, 2nd half's peak over 1st's", "-" if growth is None else growth, "MB", verdict)
    variants = dict(results.get("variants") or {})
    control = variants.pop("control", None)
    if control:
        rounds = control.get("rounds") or [control["emails_per_s"]]
        row("variant control (defaults), email", statistics.median(rounds), "emails/s",
            f"median of {len(rounds)}")  # fmt: skip
    for name, run in variants.items():
        rounds = run.get("rounds") or [run["emails_per_s"]]
        ratio = run.get("median_ratio")
        if ratio is None:  # a result of one round, before rounds were kept
            ratio = _ratio(run["emails_per_s"], (control or e2e).get("emails_per_s"))
        each = "/".join(f"{r:.2f}" for r in run.get("ratios", ()))
        row(f"variant [{name}], email", statistics.median(rounds), "emails/s",
            f"/ control: {each}" if each else "ratio = / control", ratio)  # fmt: skip


def table(data: dict[str, Any]) -> str:
    lines = [f"{'figure':<42} {'value':>14} {'unit':<16} {'target':<24} {'ratio':>7}  ok"]
    for r in data["figures"]:
        value = str(r["value"])
        if isinstance(r["value"], float | int):
            value = f"{r['value']:.2f}" if r["unit"] == "x" else f"{r['value']:,.1f}"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ""
        ok = {True: "yes", False: "NO", None: ""}[r["ok"]]
        lines.append(
            f"{r['figure']:<42} {value:>14} {r['unit']:<16} {r['target']:<24} {ratio:>7}  {ok}"
        )
    if profile := data["results"].get("profile"):
        lines.append("\nworker event-loop time per notification (py-spy, µs, share):")
        shares = profile["loop_thread_share"]
        for step, us in list(profile["loop_thread_us_per_notification"].items())[:12]:
            lines.append(f"  {us:>8,.0f}  {shares[step]:6.1%}  {step}")
        threads = ", ".join(
            f"{k} {v:,.0f}" for k, v in profile["threads_busy_us_per_notification"].items()
        )
        lines.append(f"  busy µs per notification by thread: {threads}")
    if micro := data["results"].get("micro"):
        lines.append("\nmicro benchmarks (µs per call):")
        lines.extend(f"  {us:>8,.1f}  {name}" for name, us in micro.items())
        from bench import budget  # imports this module's targets; micro is its last part

        lines.extend(["", *budget.lines(data["results"])])
    for name, error in data["failures"].items():
        lines.append(f"FAILED {name}: {error}")
    machine = data["machine"]
    lines.append(
        f"\nworker revision(s) {', '.join(data['worker_revisions'])}; load average before/after "
        f"{machine['loadavg_before'][0]}/{machine['loadavg_after'][0]} on {machine['cpus']} CPUs"
    )
    lines.append(
        f"{data['mode']} run in {data['seconds']:.0f} s; JSON in bench/results/{data['name']}.json"
    )
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    """Throughput bars (worker, baselines, variants), the latency distribution, and RSS
    over the memory run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["results"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    _throughput_axis(axes[0], results)
    _latency_axis(axes[1], results.get("latency"))
    _memory_axis(axes[2], results.get("memory"))
    fig.suptitle(f"shipment-notification worker, {data['mode']} run, "
                 f"{data['machine']['cpus']} CPUs")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _throughput_axis(ax: Any, results: dict[str, Any]) -> None:
    bars: list[tuple[str, float]] = []
    if e2e := results.get("e2e"):
        bars.append(("worker\n(1)", e2e["emails_per_s"]))
    if delayed := results.get("delayed"):
        bars.append(("worker, slow\nsinks (3)", delayed["emails_per_s"]))
    base = results.get("baselines") or {}
    for key, label in (("naive", "naive\nworker"), ("aiosmtplib", "aiosmtplib\nceiling"),
                       ("aiosmtplib-asyncio", "aiosmtplib\n(asyncio loop)"),
                       ("aiosmtplib-worker-path", "aiosmtplib\n(worker's path)"),
                       ("smtp-source", "smtp-source\nceiling")):  # fmt: skip
        if key in base:
            bars.append((label, base[key]["rate"]))
    for name, run in (results.get("variants") or {}).items():
        bars.append((f"variant\n{name}", run["emails_per_s"]))
    if not bars:
        return
    labels, values = zip(*[(label.replace("\n", " "), v) for label, v in bars], strict=True)
    ax.barh(labels, values, color="#4477aa")
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(TARGET_EMAILS_PER_S, color="#cc3311", linestyle="--", label="target 2,000/s")
    ax.set_xlabel("emails/s (naive worker: notifications/s), log scale")
    ax.set_title("throughput")
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(loc="lower right")


def _latency_axis(ax: Any, latency: dict[str, Any] | None) -> None:
    ax.set_title("publish -> SMTP accept latency")
    if not latency:
        return
    import numpy as np

    values = [max(v, 1.0) for v in latency["histogram_ms"]]
    low = latency.get("low_rate")
    top = max(values + ([max(low["histogram_ms"])] if low else []))
    bins = np.logspace(0, np.log10(max(top, 10)) + 0.05, 60)
    ax.hist(values, bins=bins, color="#228833", label=f"at {latency['rate']:g}/s")
    if low:
        ax.hist([max(v, 1.0) for v in low["histogram_ms"]], bins=bins, color="#66ccee",
                alpha=0.8, label=f"at {low['rate']:g}/s: p99 {low['p99_ms']} ms")  # fmt: skip
    for key, style in (("p50_ms", ":"), ("p95_ms", "--"), ("p99_ms", "-")):
        ax.axvline(
            latency[key], color="black", linestyle=style, label=f"{key[:3]} {latency[key]} ms"
        )
    ax.axvline(TARGET_P99_MS, color="#cc3311", label=f"target p99 {TARGET_P99_MS} ms")
    ax.set_xlabel("ms from publish to SMTP accept, log scale")
    ax.set_xscale("log")
    ax.set_ylabel("emails")
    ax.legend(fontsize=8)


def _memory_axis(ax: Any, memory: dict[str, Any] | None) -> None:
    ax.set_title("worker RSS during the memory run")
    if not memory:
        return
    samples = [s for s in memory["worker"]["samples"] if s[1] > 0]  # from the first send
    ax.plot([s[1] for s in samples], [s[2] for s in samples], color="#aa3377")
    ax.axhline(TARGET_RSS_MB, color="#cc3311", linestyle="--", label=f"target {TARGET_RSS_MB} MB")
    ax.set_xlabel("notifications sent")
    ax.set_ylabel("RSS, MB")
    ax.set_ylim(bottom=0)
    ax.legend()
