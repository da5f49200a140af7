"""Composition root: builds every part from the settings, runs the consumer, tears down in
reverse order. Signal handlers only ask the consumer to stop."""

from __future__ import annotations

import asyncio
import signal
from contextlib import AsyncExitStack

import httpx
import structlog

from worker.channels import Sender
from worker.channels.sms import TwilioSender, WebhookSender
from worker.channels.smtp import SmtpSender
from worker.consumer import KeyOrderedConsumer, Record, build_consumer
from worker.dedup import DedupStore, open_store
from worker.dlq import KafkaDeadLetters, build_producer
from worker.events import Shop
from worker.logs import get_logger
from worker.pipeline import Envelope, Pipeline, RetryPolicy
from worker.preview import check
from worker.render import Renderer
from worker.settings import Settings, SmsProvider

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
        client = httpx.AsyncClient(timeout=httpx.Timeout(sms.timeout), follow_redirects=False)
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
    store = open_store(
        settings.dedup_url, settings.dedup.ttl_days * 86400, settings.dedup.key_prefix
    )
    stack.push_async_callback(store.close)
    return store


async def run(
    settings: Settings,
    *,
    install_signal_handlers: bool = True,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or until ``stop`` is set), then drain, commit and close
    everything in reverse order."""
    async with AsyncExitStack() as stack:
        renderer = checked_renderer(settings)
        store = build_store(settings, stack)
        senders = build_senders(settings, stack)
        producer = build_producer(settings.kafka)
        await producer.start()
        stack.push_async_callback(producer.stop)
        pipeline = Pipeline(
            store=store,
            renderer=renderer,
            senders=senders,
            policy=settings.app.policy,
            dead_letters=KafkaDeadLetters(producer, settings.kafka.dead_letter_topic),
            retry=RetryPolicy(settings.app.send_retries, settings.app.send_retry_base),
        )
        kafka = build_consumer(settings.kafka)
        await kafka.start()
        stack.push_async_callback(kafka.stop)
        consumer = KeyOrderedConsumer(
            kafka,
            lambda record: _process(pipeline, record),
            topics=(settings.kafka.topic,),
            max_in_flight=settings.kafka.max_in_flight,
            commit_interval=settings.kafka.commit_interval,
            drain_timeout=settings.app.shutdown_timeout,
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
            bootstrap_servers=settings.kafka.bootstrap_servers,
            topic=settings.kafka.topic,
            group_id=settings.kafka.group_id,
            channels=sorted(senders),
            dedup=settings.dedup_url.split(":", 1)[0],
        )
        await consumer.run()
    log.info("worker_stopped")


async def _process(pipeline: Pipeline, record: Record) -> None:
    structlog.contextvars.clear_contextvars()
    envelope = Envelope(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=tuple(record.headers),
    )
    await pipeline.process(envelope)


async def _stop_when_set(stop: asyncio.Event, consumer: KeyOrderedConsumer) -> None:
    await stop.wait()
    consumer.stop()


def _stop_on_signal(consumer: KeyOrderedConsumer, sig: signal.Signals) -> None:
    log.info("shutdown_requested", signal=sig.name)
    consumer.stop()
