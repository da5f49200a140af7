"""The worker's Prometheus metrics: one ``Metrics`` object owns a registry of its own (not the
library's global one, so tests and several workers in one process never share counts) and every
metric below. No other module imports ``prometheus_client``'s metric types.

Every name has the ``shipment_notifier_`` prefix and a base unit; counters end in ``_total``.
No label carries an id (event, shipment, customer, offset): label values come from short
vocabularies the code defines, and a family that reaches ``MAX_LABEL_SETS`` folds any further
label set into one whose values are all ``other``, so a bug cannot grow a scrape without bound.

Counted on the record path, through methods that take plain values:

``records_handled_total{topic, outcome, reason}``
    records of the main and the retry topic that reached an outcome: ``notified``,
    ``retrying``, ``held``, ``skipped``, ``dead_lettered`` (``record_handled``); ``reason``
    is the rule that skipped the record (``duplicate``, ``stale``, ...) or the dead letter's
    (``not_json``, ``delivery_failed``, ...), and empty otherwise.
``notifications_total{channel, outcome, reason}``
    what became of each channel of an event: ``sent`` (``sent``), or ``skipped``,
    ``deferred``, ``held`` (quiet hours), ``dead_lettered``, ``superseded``
    (``notification``). ``reason`` is the
    rule that skipped it (``opted_out``, ``no_contact``, ...) or why it was dead-lettered,
    and empty otherwise: one label rather than ``skipped_<reason>`` outcomes, so that
    ``sum by (outcome)`` reads the whole picture and a new rule needs no new outcome.
``send_duration_seconds{channel}``
    one send to the provider, accepted or not (``sent``, ``send_failed``): an SMTP
    transaction or an SMS request, from about a millisecond to the client's timeout.
``end_to_end_delay_seconds{channel}``
    from the record's timestamp to the provider's acceptance (``sent``); retries make it
    hours long, so the buckets reach a day. Clock skew cannot make it negative.
``sms_segments_total{encoding}``
    segments of the SMS the provider accepted, by encoding (``gsm7``, ``ucs2``): what the
    provider bills (``sms_segments``).
``dead_letters_published_total{reason}``
    records written to the dead-letter topic (``dead_letter``).
``store_call_duration_seconds{call}``
    one call of the dedup store, by the store method's name (``store_call``).

Read when scraped, from functions given at wiring time (``watch_*``), so the record path does
no work for them; a function that raises drops its metric from that scrape only:

``consumer_lag_records{topic, partition}``
    the partition's high watermark minus the consumer's position (``watch_lag``).
``records_in_flight``
    records fetched and not yet at an outcome (``watch_in_flight``).
``retry_records_waiting`` and ``retry_oldest_waiting_age_seconds``
    retry records held until they are due, and how long the oldest has waited
    (``watch_retry_backlog``; the age is 0 when none waits).

And ``build_info{version, python_version}`` (always 1), plus the standard ``process_*``
metrics (CPU, memory, open files) of the process.

The counts are plain numbers in dicts, not the library's ``Counter`` and ``Histogram``, which
take a lock and validate labels on every call and cost several times as much a call; the
library turns them into text when scraped. That is safe because every call, and the scrape,
runs on the event loop's thread: call these methods from no other thread.
"""

from __future__ import annotations

import bisect
import importlib.metadata
import platform
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from worker.logs import get_logger

log = get_logger(__name__)

PREFIX = "shipment_notifier_"
MAX_LABEL_SETS = 500  # per family: far above what the vocabularies make
OTHER = "other"

# an SMTP transaction on loopback takes about a millisecond, a slow provider seconds, and a
# send is abandoned at the client's timeout (30 s by default)
SEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# a first attempt arrives within seconds; retries back off for minutes to hours
DELAY_BUCKETS = (
    *(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    *(60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400),
)
# an in-memory or SQLite call takes microseconds, Redis on a network about a millisecond;
# the top buckets catch a store that stalls
STORE_BUCKETS = (
    *(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
    *(0.25, 0.5, 1, 2.5, 5),
)

# (topic, partition, lag) for each assigned partition
LagReader = Callable[[], Iterable[tuple[str, int, int]]]
# (records waiting, POSIX time the oldest of them started waiting, or None when none waits)
BacklogReader = Callable[[], tuple[int, float | None]]

Labels = tuple[str, ...]


class Metrics:
    """The registry and every metric of the worker. The record path calls the methods below
    with plain values; ``watch_*`` give the functions read when the registry is scraped."""

    def __init__(self, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._wall_clock = wall_clock
        self._build = {"version": _version(), "python_version": platform.python_version()}
        self._handled = _Counters("records_handled", ("topic", "outcome", "reason"))
        self._notifications = _Counters("notifications", ("channel", "outcome", "reason"))
        self._dead_letters = _Counters("dead_letters_published", ("reason",))
        self._segments = _Counters("sms_segments", ("encoding",))
        self._send = _Histograms("send_duration_seconds", ("channel",), SEND_BUCKETS)
        self._delay = _Histograms("end_to_end_delay_seconds", ("channel",), DELAY_BUCKETS)
        self._store = _Histograms("store_call_duration_seconds", ("call",), STORE_BUCKETS)
        self._scraped = _ScrapeTimeValues(wall_clock)
        self.registry = CollectorRegistry()
        self.registry.register(_Counted(self))
        self.registry.register(self._scraped)
        ProcessCollector(registry=self.registry)

    def record_handled(self, topic: str, outcome: str, reason: str = "") -> None:
        """A record of ``topic`` reached ``outcome`` (the pipeline's ``Outcome``), skipped or
        dead-lettered for ``reason``."""
        self._handled.inc((topic, outcome, reason))

    def sent(self, channel: str, seconds: float, record_timestamp: float | None) -> None:
        """The provider accepted a notification after a send of ``seconds``; the delay is
        measured from ``record_timestamp`` (POSIX seconds: for a retry, its original
        record's), when the record has one."""
        key = (channel,)
        self._send.observe(key, seconds)
        self._notifications.inc((channel, "sent", ""))
        if record_timestamp is not None:
            delay = self._wall_clock() - record_timestamp
            self._delay.observe(key, delay if delay > 0 else 0.0)

    def send_failed(self, channel: str, seconds: float) -> None:
        """A send of ``seconds`` was not accepted; what follows is counted by
        ``notification`` (deferred or dead-lettered)."""
        self._send.observe((channel,), seconds)

    def notification(self, channel: str, outcome: str, reason: str = "") -> None:
        """A notification ended other than sent: skipped, deferred, dead_lettered or
        superseded, with the rule or error that decided it."""
        self._notifications.inc((channel, outcome, reason))

    def sms_segments(self, encoding: str, segments: int) -> None:
        """The provider accepted an SMS of ``segments`` segments in ``encoding``."""
        self._segments.inc((encoding,), segments)

    def dead_letter(self, reason: str) -> None:
        """A record was published to the dead-letter topic."""
        self._dead_letters.inc((reason,))

    def store_call(self, call: str, seconds: float) -> None:
        """A dedup-store call took ``seconds``, whether or not it succeeded."""
        self._store.observe((call,), seconds)

    def watch_lag(self, read: LagReader) -> None:
        self._scraped.lag = read

    def watch_in_flight(self, read: Callable[[], int]) -> None:
        self._scraped.in_flight = read

    def watch_retry_backlog(self, read: BacklogReader) -> None:
        self._scraped.retry_backlog = read

    def families(self) -> Iterator[Metric]:
        """The counted families as they stand, for the registry's scrape."""
        build = InfoMetricFamily(PREFIX + "build", _DOCS["build"])
        build.add_metric((), self._build)
        yield build
        for counters in (self._handled, self._notifications, self._dead_letters, self._segments):
            yield counters.family()
        for histograms in (self._send, self._delay, self._store):
            yield histograms.family()


class _Counted:
    """The collector of the counts kept on the record path."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()


class _LabelSets:
    """The label sets of one family, bounded by ``MAX_LABEL_SETS``."""

    def __init__(self, name: str, labels: Labels) -> None:
        self.name = name
        self.labels = labels
        self._folded = False

    def admit(self, key: Labels, size: int) -> Labels:
        """``key``, or the folded label set when the family is full."""
        folded = (OTHER,) * len(key)
        if size < MAX_LABEL_SETS or key == folded:
            return key
        if not self._folded:  # once: the cause is one bug, not one record
            log.warning("metric_labels_folded", metric=self.name, labels=key)
            self._folded = True
        return folded


class _Counters(_LabelSets):
    def __init__(self, name: str, labels: Labels) -> None:
        super().__init__(name, labels)
        self._counts: dict[Labels, int] = {}

    def inc(self, key: Labels, amount: int = 1) -> None:
        try:
            self._counts[key] += amount
        except KeyError:
            key = self.admit(key, len(self._counts))
            self._counts[key] = self._counts.get(key, 0) + amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(PREFIX + self.name, _DOCS[self.name], labels=self.labels)
        for key, count in self._counts.items():
            family.add_metric(key, count)
        return family


class _Buckets:
    """One histogram's counts: ``counts[i]`` holds the values in bucket ``i`` alone (not
    cumulative), the last one those above every bound."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0


class _Histograms(_LabelSets):
    def __init__(self, name: str, labels: Labels, bounds: tuple[float, ...]) -> None:
        super().__init__(name, labels)
        self._bounds = bounds
        # a float's repr is the text Prometheus writes for a bound: "0.001", "60.0"
        self._le = [*(repr(float(b)) for b in bounds), "+Inf"]
        self._by_key: dict[Labels, _Buckets] = {}

    def observe(self, key: Labels, value: float) -> None:
        buckets = self._by_key.get(key)
        if buckets is None:
            buckets = self._add(key)
        # bisect_left puts a value equal to a bound in that bound's bucket, as ``le`` means
        buckets.counts[bisect.bisect_left(self._bounds, value)] += 1
        buckets.sum += value

    def _add(self, key: Labels) -> _Buckets:
        key = self.admit(key, len(self._by_key))
        buckets = self._by_key.get(key)
        if buckets is None:
            buckets = self._by_key[key] = _Buckets(len(self._le))
        return buckets

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(PREFIX + self.name, _DOCS[self.name], labels=self.labels)
        for key, buckets in self._by_key.items():
            cumulative, total = [], 0
            for le, count in zip(self._le, buckets.counts, strict=True):
                total += count
                cumulative.append((le, float(total)))
            family.add_metric(key, cumulative, buckets.sum)
        return family


class _ScrapeTimeValues:
    """A collector whose values are read from the functions given at wiring time."""

    def __init__(self, wall_clock: Callable[[], float]) -> None:
        self._wall_clock = wall_clock
        self.lag: LagReader | None = None
        self.in_flight: Callable[[], int] | None = None
        self.retry_backlog: BacklogReader | None = None

    def collect(self) -> Iterator[Metric]:
        for name, produce in (
            ("consumer_lag_records", self._lag),
            ("records_in_flight", self._in_flight),
            ("retry_records_waiting", self._retry_backlog),
        ):
            try:
                families = produce()
            except Exception:  # a scrape must not fail, nor the worker, for one reading
                log.warning("metric_read_failed", metric=name, exc_info=True)
                continue
            yield from families

    def _lag(self) -> list[Metric]:
        if self.lag is None:
            return []
        family = _gauge("consumer_lag_records", ("topic", "partition"))
        for topic, partition, lag in self.lag():
            family.add_metric((topic, str(partition)), lag)
        return [family]

    def _in_flight(self) -> list[Metric]:
        if self.in_flight is None:
            return []
        family = _gauge("records_in_flight")
        family.add_metric((), self.in_flight())
        return [family]

    def _retry_backlog(self) -> list[Metric]:
        if self.retry_backlog is None:
            return []
        waiting, oldest_since = self.retry_backlog()
        age = 0.0 if oldest_since is None else max(0.0, self._wall_clock() - oldest_since)
        count = _gauge("retry_records_waiting")
        count.add_metric((), waiting)
        oldest = _gauge("retry_oldest_waiting_age_seconds")
        oldest.add_metric((), age)
        return [count, oldest]


def _gauge(name: str, labels: Labels = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, _DOCS[name], labels=labels)


def _version() -> str:
    try:
        return importlib.metadata.version("shipment-notifier")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree not installed
        return "unknown"


_DOCS = {
    "records_handled": "Records that reached an outcome, by topic, outcome and reason.",
    "notifications": "Notifications by channel and outcome; reason names the rule or error.",
    "dead_letters_published": "Records published to the dead-letter topic, by reason.",
    "sms_segments": "Segments of the SMS the provider accepted, by encoding.",
    "send_duration_seconds": "Duration of one send to the provider, accepted or not.",
    "end_to_end_delay_seconds": "From the record's timestamp to the provider's acceptance.",
    "store_call_duration_seconds": "Duration of one dedup-store call, by method.",
    "consumer_lag_records": "High watermark minus the consumer's position, per partition.",
    "records_in_flight": "Records fetched and not yet at an outcome.",
    "retry_records_waiting": "Retry records held until they are due.",
    "retry_oldest_waiting_age_seconds": "How long the oldest waiting retry record has waited.",
    "build": "The worker's version and the Python version running it.",
}
