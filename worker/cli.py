"""Command line: ``python -m worker run|health|check|preview|schema|asyncapi|dlq|history``.
Thin: parses arguments, loads the settings, calls into the package. Exit codes: 0 ok, 1 the
command found a problem, 2 bad configuration or usage."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from worker import app, asyncapi, dlq, history, logs, preview, probes
from worker.consumer import ConsumerFailed
from worker.events import Event
from worker.kafka_client import KafkaUnavailable
from worker.notification_log import LogRecord
from worker.policy import CHANNELS, STATUSES
from worker.render import Renderer, RenderError
from worker.settings import ConfigError, EventLoop, Settings, load_settings

log = logs.get_logger(__name__)

EXIT_PROBLEM = 1
EXIT_CONFIG = 2
GC_YOUNG_THRESHOLD = 10_000  # net allocations between young collections (Python's default: 700)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(settings.log)
    try:
        code: int = args.func(settings, args)
    except (RenderError, app.StartupError) as exc:
        # e.g. DEFAULT_LOCALE without templates, or a template that fails with sample data
        print(f"start-up error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    except KafkaUnavailable as exc:
        # already retried for KAFKA_CONNECT_TIMEOUT (each try logged), or refused for good
        print(f"kafka error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    return code


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="consume shipment events and send notifications")
    run.set_defaults(func=_run)

    health = commands.add_parser(
        "health",
        help="ask a running worker's /livez (or /readyz): exit 0 when it answers 200, else 1",
    )
    health.add_argument("--ready", action="store_true", help="ask /readyz instead of /livez")
    health.add_argument(
        "--host", help="the worker's address (default: METRICS_HOST, or loopback for 0.0.0.0)"
    )
    health.add_argument("--port", type=int, help="the probe port (default: METRICS_PORT)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    health.set_defaults(func=_health)

    check = commands.add_parser(
        "check",
        help="render every status x channel x locale with sample data, print each SMS "
        "template's segments; exit 1 on errors or an SMS over SMS_MAX_SEGMENTS",
    )
    check.set_defaults(func=_check)

    show = commands.add_parser("preview", help="print one rendered notification")
    show.add_argument("--status", choices=STATUSES, required=True)
    show.add_argument("--locale", default=None, help="BCP 47 tag, e.g. vi or vi-VN")
    show.add_argument("--channel", choices=CHANNELS, default="email")
    show.add_argument("--event", type=Path, help="a JSON event file to render instead of samples")
    show.add_argument("--minimal", action="store_true", help="sample data without optional fields")
    show.add_argument("--html-out", type=Path, help="write the HTML part to this file")
    show.set_defaults(func=_preview)

    schema = commands.add_parser("schema", help="print the event JSON Schema")
    schema.add_argument(
        "--notifications", action="store_true", help="the notification log's schema instead"
    )
    schema.set_defaults(func=_schema)
    contract = commands.add_parser("asyncapi", help="print the topics' AsyncAPI 3.0 document")
    contract.set_defaults(func=_asyncapi)

    dlq = commands.add_parser("dlq", help="inspect or replay the dead-letter topic")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_commands.add_parser("list", help="dead letters grouped by reason").set_defaults(
        func=_dlq_list
    )
    again = dlq_commands.add_parser("replay", help="publish dead letters to the main topic again")
    again.add_argument("--reason", help="error.type (e.g. permanent) or type/channel")
    again.add_argument(
        "--since", type=_timestamp, help="only those dead-lettered at or after this time (ISO)"
    )
    again.add_argument("--dry-run", action="store_true", help="count, do not publish")
    again.set_defaults(func=_dlq_replay)
    _history_parser(commands)
    return parser


def _history_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    past = commands.add_parser(
        "history", help="what became of a shipment's or an order's notifications (the log topic)"
    )
    which = past.add_mutually_exclusive_group(required=True)
    which.add_argument("--shipment", help="a shipment id: reads only its partition")
    which.add_argument("--order", help="an order id: scans every partition, within --scan-limit")
    past.add_argument("--since", type=_timestamp, help="only outcomes from this time on (ISO)")
    past.add_argument(
        "--scan-limit",
        type=_positive,
        default=history.SCAN_LIMIT,
        help="--order reads at most this many of the newest records (default %(default)s)",
    )
    past.add_argument("--json", action="store_true", help="one JSON record per line")
    past.set_defaults(func=_history)


def _timestamp(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    _tune_gc()
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.app.event_loop)) as runner:
            runner.run(app.run(settings))
    except ConsumerFailed as exc:
        # already logged with its traceback; the record it failed on stays uncommitted
        log.critical("worker_failed", error=str(exc))
        return EXIT_PROBLEM
    return 0


def _health(settings: Settings, args: argparse.Namespace) -> int:
    """One line on stdout (what the worker answered, or why nothing was), for exec probes and
    HEALTHCHECKs: exit 0 on a 200, 1 otherwise."""
    host = args.host or settings.app.metrics_host
    if host in ("0.0.0.0", "::", ""):  # a wildcard to listen on, not an address to ask
        host = "127.0.0.1"
    port = args.port or settings.app.metrics_port
    path = probes.READYZ_PATH if args.ready else probes.LIVEZ_PATH
    ok, line = asyncio.run(probes.health(host, port, path, args.timeout))
    print(line)
    return 0 if ok else EXIT_PROBLEM


def _tune_gc() -> None:
    """The cyclic garbage collector, set for a long-running worker. Nearly everything the
    worker allocates is freed by reference counting, yet Python's default starts a young
    collection every 700 net allocations: about 1,300 collections for 20k events, 1.5 s of
    CPU, 7% of the run. Now one runs every 10,000, and what the imports made (modules,
    schemas, some 70k objects) is frozen out of every scan: 0.01-0.04 s for the same run."""
    gc.collect()  # garbage the imports left would otherwise be frozen for good
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def loop_factory(kind: EventLoop) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the ``EVENT_LOOP`` a run uses (also the bench's SMTP ceilings)."""
    if kind is EventLoop.UVLOOP:
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def _check(settings: Settings, args: argparse.Namespace) -> int:
    renderer = app.build_renderer(settings)
    count, failures = preview.check(renderer)
    for f in failures:
        print(f"FAIL {f.locale}/{f.channel}/{f.status} ({f.data} data): {f.error}")
    locales = ", ".join(sorted(renderer.locales))
    print(
        f"{count - len(failures)}/{count} renders ok: {len(STATUSES)} statuses x "
        f"{len(CHANNELS)} channels x locales {locales} x full and minimal data"
    )
    over = _check_sms_costs(renderer, settings.sms.unaccented or "none")
    return EXIT_PROBLEM if failures or over else 0


def _check_sms_costs(renderer: Renderer, unaccented: str) -> int:
    """Print the segments and encoding of every SMS template with long fields, then a FAIL
    line for each over the budget; return how many are over."""
    rows = preview.sms_costs(renderer)
    budget = renderer.sms_budget.segments
    locales = sorted({row.locale for row in rows})
    print(
        f"\nSMS segments and encoding with long fields, every field whole "
        f"(SMS_MAX_SEGMENTS={budget}, SMS_UNACCENTED={unaccented}):"
    )
    print(f"{'status':22}" + "".join(f"{locale:10}" for locale in locales).rstrip())
    cells = {(row.status, row.locale): f"{row.segments} {row.encoding}" for row in rows}
    for status in STATUSES:
        line = "".join(f"{cells[status, locale]:10}" for locale in locales)
        print(f"{status:22}{line}".rstrip())
    over = [row for row in rows if row.segments > budget]
    for row in over:
        print(
            f"FAIL {row.locale}/sms/{row.status}: {row.segments} segments ({row.encoding}) "
            f"with long fields, over SMS_MAX_SEGMENTS={budget}"
        )
    return len(over)


def _preview(settings: Settings, args: argparse.Namespace) -> int:
    renderer = app.build_renderer(settings)
    locale = args.locale or renderer.default_locale
    if args.event:
        try:
            data = json.loads(args.event.read_text(encoding="utf-8"))
            data["status"] = args.status
            data.setdefault("customer", {})["locale"] = locale
            event = Event.model_validate(data)
        except (OSError, ValueError, TypeError, AttributeError, ValidationError) as exc:
            print(f"--event {args.event}: not an event object: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    else:
        event = preview.sample_event(args.status, locale, minimal=args.minimal)
    if args.channel == "sms":
        print(renderer.sms(event).text)
        return 0
    email = renderer.email(event)
    print(f"Subject: {email.subject}\n\n{email.text}")
    if args.html_out:
        args.html_out.write_text(email.html, encoding="utf-8")
        print(f"(HTML part written to {args.html_out})")
    else:
        print(email.html)
    return 0


def _dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    summary = asyncio.run(dlq.summarize(settings.kafka))
    topic = settings.kafka.dead_letter_topic
    if not summary.total:
        print(f"{topic}: empty")
        return 0
    print(
        f"{topic}: {summary.total} dead letters, {summary.first:%Y-%m-%d %H:%M:%S} to "
        f"{summary.last:%Y-%m-%d %H:%M:%S} UTC"
    )
    # both come from headers a relay's reply or a producer filled: shown masked and inert
    for reason, count in summary.by_reason.most_common():
        shown = logs.terminal_text(reason, limit=64)
        print(f"{count:8d}  {shown:32s}  e.g. {logs.terminal_text(summary.examples[reason])}")
    return 0


def _dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    wanted = dlq.selector(args.reason, args.since)
    count = asyncio.run(dlq.replay(settings.kafka, wanted, dry_run=args.dry_run))
    verb = "would replay" if args.dry_run else "replayed"
    print(f"{verb} {count} dead letters to {settings.kafka.topic}")
    return 0


def _schema(settings: Settings, args: argparse.Namespace) -> int:
    model = LogRecord if args.notifications else Event
    print(json.dumps(model.model_json_schema(), indent=2, ensure_ascii=False))
    return 0


def _history(settings: Settings, args: argparse.Namespace) -> int:
    topic = settings.kafka.notification_log_topic
    if topic is None:
        print("history: the notification log is off (KAFKA_NOTIFICATIONS_TOPIC=)", file=sys.stderr)
        return EXIT_CONFIG
    query = history.Query(args.shipment, args.order, args.since, args.scan_limit)
    found = asyncio.run(history.search(settings.kafka, topic, query))
    if args.json:
        for record in found.records:
            print(record.model_dump_json())
    else:
        asked = f"shipment {args.shipment}" if args.shipment else f"order {args.order}"
        print(f"{topic}: {len(found.records)} notification outcomes of {asked}")
        if found.records:
            print("\n".join(history.timeline(found.records, with_shipment=bool(args.order))))
    if found.truncated:
        print(
            f"history: only the newest {args.scan_limit} records were read; older ones need "
            "--since or a larger --scan-limit",
            file=sys.stderr,
        )
    if found.unreadable:
        print(f"history: {found.unreadable} matching records were not readable", file=sys.stderr)
    return 0


def _asyncapi(settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(asyncapi.document(), indent=2, ensure_ascii=False))
    return 0
