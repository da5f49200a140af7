"""Making sure the side topics exist before the worker subscribes to them.

A consumer learns of a topic created later only at its next metadata refresh (minutes), so the
retry and dead-letter topics (and the notification log's) are created at start-up when missing,
with as many partitions as the main topic (retries then spread like the events they retry).
"""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from worker import kafka_client
from worker.logs import get_logger
from worker.settings import KafkaSettings

log = get_logger(__name__)


async def ensure_side_topics(settings: KafkaSettings) -> None:
    admin = _admin(settings)
    await kafka_client.start(admin, settings)
    try:
        existing = set(await admin.list_topics())
        wanted = [settings.dead_letter_topic, settings.retries_topic]
        if settings.notification_log_topic is not None:
            wanted.append(settings.notification_log_topic)
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return
        partitions = await _partitions(admin, settings.topic) if settings.topic in existing else 1
        brokers = len((await admin.describe_cluster())["brokers"])
        replicas = min(3, brokers)
        await _create(admin, missing, partitions, replicas)
    except KafkaError as exc:
        # the worker still runs; the topics appear on first use if the broker auto-creates
        log.warning("side_topics_not_created", topics=missing, error=repr(exc))
    finally:
        await admin.close()


def _admin(settings: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        **kafka_client.connection_kwargs(settings), client_id=f"{settings.client_id}-admin"
    )


async def _partitions(admin: AIOKafkaAdminClient, topic: str) -> int:
    described = await admin.describe_topics([topic])
    return max(1, len(described[0]["partitions"]))


async def _create(
    admin: AIOKafkaAdminClient, topics: list[str], partitions: int, replicas: int
) -> None:
    response = await admin.create_topics([NewTopic(name, partitions, replicas) for name in topics])
    for name, code, *_ in getattr(response, "topic_errors", ()):
        if code not in (0, TopicAlreadyExistsError.errno):
            raise KafkaError(f"creating {name} failed with error code {code}")
    log.info("side_topics_created", topics=topics, partitions=partitions, replicas=replicas)


async def partitions_of(settings: KafkaSettings, topic: str) -> list[int]:
    """The partition numbers of ``topic`` (empty when it does not exist)."""
    admin = _admin(settings)
    await kafka_client.start(admin, settings)
    try:
        if topic not in await admin.list_topics():
            return []
        described = await admin.describe_topics([topic])
        return sorted(p["partition"] for p in described[0]["partitions"])
    finally:
        await admin.close()


async def ensure_preferences_topic(settings: KafkaSettings) -> None:
    """Create the preferences topic when missing: compacted (the newest record per subject is
    what counts), with the main topic's partition count. Left as it is when it exists."""
    topic = settings.preferences_topic
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, client_id=f"{settings.client_id}-admin"
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        if topic in existing:
            return
        partitions = await _partitions(admin, settings.topic) if settings.topic in existing else 1
        replicas = min(3, len((await admin.describe_cluster())["brokers"]))
        new = NewTopic(topic, partitions, replicas, topic_configs={"cleanup.policy": "compact"})
        response = await admin.create_topics([new])
        for name, code, *_ in getattr(response, "topic_errors", ()):
            if code not in (0, TopicAlreadyExistsError.errno):
                raise KafkaError(f"creating {name} failed with error code {code}")
        log.info("preferences_topic_created", topic=topic, partitions=partitions)
    except KafkaError as exc:
        log.warning("preferences_topic_not_created", topic=topic, error=repr(exc))
    finally:
        await admin.close()
