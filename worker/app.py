"""Composition root: builds every part from the settings, runs the consumer, tears down in
reverse order. Signal handlers only ask the consumer to stop."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import uuid
from contextlib import AsyncExitStack

from worker.channels import Sender
from worker.channels.sms import TwilioSender, WebhookSender, http_client
from worker.channels.smtp import SmtpSender
from worker.consumer import KeyOrderedConsumer, build_consumer
from worker.dedup import DedupStore, open_store
from worker.dedup.resilient import Resilient
from worker.dedup.store import StoreUnavailable
from worker.delivery import Courier, InProcessRetry
from worker.events import Shop
from worker.logs import get_logger
from worker.notification_log import NoLog, NotificationLog, build_notes
from worker.pipeline import Pipeline
from worker.preview import check
from worker.render import Renderer
from worker.retry import Backoff, RetryLimits
from worker.settings import Settings, SmsProvider
from worker.sidetopics import SideTopics, build_producer
from worker.topics import ensure_side_topics

log = get_logger(__name__)


class StartupError(Exception):
    """The worker must not start: e.g. a template fails to render with sample data."""


def build_renderer(settings: Settings) -> Renderer:
    app = settings.app
    shop = Shop(name=app.shop_name, url=app.shop_url, support_email=app.shop_support_email)
    return Renderer(app.templates_dir, app.default_locale, shop)


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


def build_store(settings: Settings, stack: AsyncExitStack) -> DedupStore:
    try:
        store = open_store(
            settings.dedup_url, settings.dedup.ttl_days * 86400, settings.dedup.key_prefix
        )
    except StoreUnavailable as exc:
        raise StartupError(f"DEDUP_URL: {exc}") from exc
    stack.push_async_callback(store.close)
    return Resilient(store)


def build_pipeline(
    settings: Settings,
    store: DedupStore,
    renderer: Renderer,
    senders: dict[str, Sender],
    side: SideTopics,
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
    )
    return Pipeline(
        store=store,
        courier=courier,
        policy=app.policy,
        channels=frozenset(senders),
        dead_letters=side,
        locale_for=renderer.locale_for,
        retry_topic=side.retry_topic,
    )


async def run(
    settings: Settings,
    *,
    install_signal_handlers: bool = True,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or until ``stop`` is set), then drain, commit and close
    everything in reverse order."""
    kafka_settings = settings.kafka
    async with AsyncExitStack() as stack:
        renderer = checked_renderer(settings)
        store = build_store(settings, stack)
        senders = build_senders(settings, stack)
        await ensure_side_topics(kafka_settings)
        producer = build_producer(kafka_settings)
        await producer.start()
        stack.push_async_callback(producer.stop)
        side = SideTopics(producer, kafka_settings.dead_letter_topic, kafka_settings.retries_topic)
        notes = build_notes(settings, producer)
        pipeline = build_pipeline(settings, store, renderer, senders, side, notes)
        kafka = build_consumer(kafka_settings)
        await kafka.start()
        stack.push_async_callback(kafka.stop)
        consumer = KeyOrderedConsumer(
            kafka,
            pipeline.handle,
            topics=(kafka_settings.topic, side.retry_topic),
            max_in_flight=kafka_settings.max_in_flight,
            commit_interval=kafka_settings.commit_interval,
            drain_timeout=settings.app.shutdown_timeout,
            due_at=pipeline.due_at,
        )
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
            topic=kafka_settings.topic,
            retry_topic=side.retry_topic,
            group_id=kafka_settings.group_id,
            worker_id=settings.app.worker_id,
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
