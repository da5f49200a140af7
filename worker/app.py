"""Composition root: builds every part from the settings, runs the consumer, tears down in
reverse order. Signal handlers only ask the consumer to stop.

The probe server (``/metrics``, ``/livez``, ``/readyz``) starts first and stops last, so an
orchestrator sees a worker that is still starting as alive and not ready, and one that is
stopping likewise; each readiness check fails until its part is built."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass

from worker.channels import Sender
from worker.channels.sms import TwilioSender, WebhookSender, http_client
from worker.channels.smtp import SmtpSender
from worker.cloudevents import AcceptedTypes, Decoder
from worker.consumer import Handler, KeyOrderedConsumer, build_consumer
from worker.dedup import DedupStore, open_store
from worker.dedup.resilient import Resilient
from worker.dedup.store import StoreUnavailable
from worker.delivery import Courier, InProcessRetry
from worker.events import Shop
from worker.kafka_client import start as start_client
from worker.kafka_client import wait_for_broker
from worker.logs import get_logger
from worker.metrics import Metrics
from worker.notification_log import NoLog, NotificationLog, build_notes
from worker.pipeline import Pipeline
from worker.preference_feed import PreferenceFeed
from worker.preview import check
from worker.probes import Check, Liveness, ProbeServer, Readiness
from worker.quiet import quiet_hours
from worker.ratelimit import throttles
from worker.render import Renderer
from worker.retry import Backoff, RetryLimits
from worker.settings import Settings, SmsProvider
from worker.sidetopics import SideTopics, build_producer
from worker.sms_text import SmsBudget
from worker.topics import ensure_preferences_topic, ensure_side_topics

log = get_logger(__name__)


class StartupError(Exception):
    """The worker must not start: e.g. a template fails to render with sample data."""


def build_renderer(settings: Settings) -> Renderer:
    app = settings.app
    shop = Shop(name=app.shop_name, url=app.shop_url, support_email=app.shop_support_email)
    return Renderer(
        app.templates_dir,
        app.default_locale,
        shop,
        sms_budget=SmsBudget(settings.sms.max_segments),
        sms_unaccented=settings.sms.unaccented_locales,
    )


def checked_renderer(settings: Settings) -> Renderer:
    """A renderer whose every template renders with sample data: a broken template stops
    start-up instead of dead-lettering every notification that needs it."""
    renderer = build_renderer(settings)
    _, failures = check(renderer)
    if failures:
        first = failures[0]
        raise StartupError(
            f"{len(failures)} template renders fail, first {first.locale}/{first.channel}/"
            f"{first.status}: {first.error} (run: python -m worker check)"
        )
    return renderer


def build_senders(settings: Settings, stack: AsyncExitStack) -> dict[str, Sender]:
    senders: dict[str, Sender] = {"email": SmtpSender(settings.smtp, settings.email)}
    sms = settings.sms
    if sms.provider is not SmsProvider.DISABLED:
        client = http_client(sms.timeout, sms.pool_size)
        if sms.provider is SmsProvider.TWILIO:
            assert sms.account_sid and sms.auth_token and sms.from_  # checked by the settings
            senders["sms"] = TwilioSender(
                client, sms.api_url, sms.account_sid, sms.auth_token.get_secret_value(), sms.from_
            )
        else:
            assert sms.webhook_url
            senders["sms"] = WebhookSender(client, sms.webhook_url)
    for sender in senders.values():
        stack.push_async_callback(sender.close)
    return senders


async def build_store(
    settings: Settings, stack: AsyncExitStack, metrics: Metrics | None = None
) -> Resilient:
    """The store, checked: one that refuses the worker (a SQLite file held by another, a
    Redis refusing the credentials or the TLS) stops start-up; one out of reach is waited for."""
    dedup = settings.dedup
    try:
        store = open_store(settings.dedup_url, dedup.ttl_days * 86400, dedup.key_prefix, dedup)
        stack.push_async_callback(store.close)
        resilient = Resilient(store, metrics=metrics)
        await resilient.check()
    except StoreUnavailable as exc:
        raise StartupError(f"DEDUP_URL: {exc}") from exc
    return resilient


def build_pipeline(
    settings: Settings,
    store: DedupStore,
    renderer: Renderer,
    senders: dict[str, Sender],
    side: SideTopics,
    metrics: Metrics | None = None,
    notes: NotificationLog | NoLog | None = None,
) -> Pipeline:
    app, limits = settings.app, settings.retry
    courier = Courier(
        notes=notes,
        store=store,
        renderer=renderer,
        senders=senders,
        dead_letters=side,
        retries=side,
        in_process=InProcessRetry(app.send_retries, Backoff(app.send_retry_base, 10.0)),
        limits=RetryLimits(
            limits.max_attempts, limits.max_age, Backoff(limits.base_delay, limits.max_delay)
        ),
        owner=f"{app.worker_id}/{os.getpid()}-{uuid.uuid4().hex[:8]}",
        lease=app.claim_lease,
        metrics=metrics,
        quiet=quiet_hours(settings.pacing),
        throttles=throttles(settings.pacing),
    )
    return Pipeline(
        store=store,
        courier=courier,
        policy=app.policy,
        channels=frozenset(senders),
        dead_letters=side,
        locale_for=renderer.locale_for,
        retry_topic=side.retry_topic,
        metrics=metrics,
        decode=Decoder(AcceptedTypes(app.cloudevents_types)),
    )


@dataclass
class Parts:
    """The parts ``/readyz`` asks about, set as they are built: one not built yet is not
    ready."""

    renderer: Renderer | None = None
    store: Resilient | None = None
    consumer: KeyOrderedConsumer | None = None

    def checks(self) -> dict[str, Check]:
        return {
            "templates_loaded": self._templates_loaded,
            "store_answers": self._store_answers,
            "broker_reachable": self._broker_reachable,
            "in_group": self._in_group,
        }

    async def _templates_loaded(self) -> bool:
        return self.renderer is not None  # set once every template rendered with sample data

    async def _store_answers(self) -> bool:
        if self.store is None:
            return False
        await self.store.ping()
        return True

    async def _broker_reachable(self) -> bool:
        return self.consumer is not None and await self.consumer.broker_reachable()

    async def _in_group(self) -> bool:
        return self.consumer is not None and self.consumer.in_group()


async def serve_probes(
    settings: Settings, stack: AsyncExitStack, metrics: Metrics, liveness: Liveness, parts: Parts
) -> ProbeServer:
    """The probe server, serving until ``stack`` closes; a port that cannot be listened on
    stops start-up."""
    app = settings.app
    server = ProbeServer(
        host=app.metrics_host,
        port=app.metrics_port,
        registry=metrics.registry,
        liveness=liveness,
        readiness=Readiness(parts.checks(), timeout=app.readiness_timeout),
        timeout=app.readiness_timeout,
    )
    try:
        await stack.enter_async_context(server)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StartupError(
            f"METRICS_PORT: cannot listen on {app.metrics_host}:{app.metrics_port}: {why}"
        ) from exc
    log.info("probes_serving", host=app.metrics_host, port=server.port)
    return server


async def run(
    settings: Settings,
    *,
    install_signal_handlers: bool = True,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or until ``stop`` is set), then drain, commit and close
    everything in reverse order."""
    kafka_settings = settings.kafka
    metrics = Metrics()
    liveness = Liveness(
        poll_ttl=settings.app.liveness_poll_ttl, record_ttl=settings.app.liveness_record_ttl
    )
    parts = Parts()
    async with AsyncExitStack() as stack:
        probes = await serve_probes(settings, stack, metrics, liveness, parts)
        renderer = parts.renderer = checked_renderer(settings)
        store = parts.store = await build_store(settings, stack, metrics)
        senders = build_senders(settings, stack)
        await wait_for_broker(kafka_settings)
        await ensure_side_topics(kafka_settings)
        producer = build_producer(kafka_settings)
        await start_client(producer, kafka_settings)
        stack.push_async_callback(producer.stop)
        side = SideTopics(
            producer, kafka_settings.dead_letter_topic, kafka_settings.retries_topic, metrics
        )
        notes = build_notes(settings, producer)
        pipeline = build_pipeline(settings, store, renderer, senders, side, metrics, notes)
        handler: Handler = pipeline.handle
        topics: tuple[str, ...] = (kafka_settings.topic, side.retry_topic)
        if kafka_settings.preferences_topic:  # read with the events: docs/preferences.md
            await ensure_preferences_topic(kafka_settings)
            feed = PreferenceFeed(store, kafka_settings.preferences_topic, side)
            handler, topics = feed.route(pipeline.handle), (*topics, feed.topic)
        kafka = build_consumer(kafka_settings)
        await start_client(kafka, kafka_settings)
        stack.push_async_callback(kafka.stop)
        consumer = parts.consumer = KeyOrderedConsumer(
            kafka,
            handler,
            topics=topics,
            max_in_flight=kafka_settings.max_in_flight,
            commit_interval=kafka_settings.commit_interval,
            drain_timeout=settings.app.shutdown_timeout,
            due_at=pipeline.due_at,
            watch=liveness,
        )
        metrics.watch_lag(consumer.lag)
        metrics.watch_in_flight(consumer.in_flight)
        metrics.watch_retry_backlog(lambda: consumer.retry_backlog(side.retry_topic))
        if install_signal_handlers:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, _stop_on_signal, consumer, sig)
                stack.callback(loop.remove_signal_handler, sig)
        if stop is not None:
            watcher = asyncio.create_task(_stop_when_set(stop, consumer))
            stack.callback(watcher.cancel)
        log.info(
            "worker_started",
            bootstrap_servers=kafka_settings.bootstrap_servers,
            security_protocol=str(kafka_settings.security_protocol),
            sasl_mechanism=kafka_settings.sasl_mechanism and str(kafka_settings.sasl_mechanism),
            topic=kafka_settings.topic,
            retry_topic=side.retry_topic,
            group_id=kafka_settings.group_id,
            worker_id=settings.app.worker_id,
            metrics_port=probes.port,
            channels=sorted(senders),
            dedup=settings.dedup_url.split(":", 1)[0],
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
            gc_thresholds=list(gc.get_threshold()),
        )
        await consumer.run()
    log.info("worker_stopped")


async def _stop_when_set(stop: asyncio.Event, consumer: KeyOrderedConsumer) -> None:
    await stop.wait()
    consumer.stop()


def _stop_on_signal(consumer: KeyOrderedConsumer, sig: signal.Signals) -> None:
    log.info("shutdown_requested", signal=sig.name)
    consumer.stop()
