"""The metrics as a scrape shows them: names, labels, bucket counts, the values read when
scraped, and the bound on label sets."""

from __future__ import annotations

import importlib.metadata
import platform
import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker import metrics
from worker.metrics import SEND_BUCKETS, Metrics


def scrape(m: Metrics) -> list[str]:
    return generate_latest(m.registry).decode().splitlines()


def ours(lines: list[str]) -> list[str]:
    """The sample lines of the worker's own metrics (no comments, no ``process_*``)."""
    return [line for line in lines if line.startswith("shipment_notifier_")]


def unprefixed(lines: list[str]) -> set[str]:
    return {line.removeprefix("shipment_notifier_") for line in ours(lines)}


def test_counters_are_scraped_with_their_labels() -> None:
    """Each counting method adds one to the sample of exactly its label values."""
    m = Metrics()
    m.record_handled("shipments", "notified")
    m.record_handled("shipments", "notified")
    m.record_handled("shipments.retry", "dead_lettered", "bad_retry_record")
    m.notification("sms", "skipped", "opted_out")
    m.notification("email", "deferred")
    m.dead_letter("undecodable")
    lines = scrape(m)
    assert "# TYPE shipment_notifier_records_handled_total counter" in lines
    assert [line for line in ours(lines) if "_total" in line] == [
        'shipment_notifier_records_handled_total{outcome="notified",reason="",topic="shipments"}'
        " 2.0",
        "shipment_notifier_records_handled_total"
        '{outcome="dead_lettered",reason="bad_retry_record",topic="shipments.retry"} 1.0',
        'shipment_notifier_notifications_total{channel="sms",outcome="skipped",reason="opted_out"}'
        " 1.0",
        'shipment_notifier_notifications_total{channel="email",outcome="deferred",reason=""} 1.0',
        'shipment_notifier_dead_letters_published_total{reason="undecodable"} 1.0',
    ]


def test_build_info_names_the_version_and_python() -> None:
    """build_info is 1 with the installed package's version and the running Python's."""
    version = importlib.metadata.version("shipment-notifier")
    python = platform.python_version()
    assert (
        f'shipment_notifier_build_info{{python_version="{python}",version="{version}"}} 1.0'
        in scrape(Metrics())
    )


def test_a_sent_notification_counts_its_send_and_its_delay() -> None:
    """sent() counts a sent notification, observes the send's duration and the delay from the
    record's timestamp to now, by channel."""
    m = Metrics(wall_clock=lambda: 1_000.0)
    m.sent("email", 0.003, record_timestamp=997.5)
    send, delay = "send_duration_seconds", "end_to_end_delay_seconds"
    assert {
        'notifications_total{channel="email",outcome="sent",reason=""} 1.0',
        f'{send}_bucket{{channel="email",le="0.0025"}} 0.0',
        f'{send}_bucket{{channel="email",le="0.005"}} 1.0',
        f'{delay}_bucket{{channel="email",le="1.0"}} 0.0',
        f'{delay}_bucket{{channel="email",le="2.5"}} 1.0',
        f'{delay}_sum{{channel="email"}} 2.5',
    } <= unprefixed(scrape(m))


def test_delay_is_never_negative_and_needs_a_timestamp() -> None:
    """A record stamped in the future (clock skew) counts as no delay; one without a
    timestamp observes no delay at all, though its send is counted."""
    m = Metrics(wall_clock=lambda: 1_000.0)
    m.sent("sms", 0.01, record_timestamp=1_030.0)
    m.sent("sms", 0.01, record_timestamp=None)
    lines = ours(scrape(m))
    assert 'shipment_notifier_end_to_end_delay_seconds_count{channel="sms"} 1.0' in lines
    assert 'shipment_notifier_end_to_end_delay_seconds_sum{channel="sms"} 0.0' in lines
    assert 'shipment_notifier_send_duration_seconds_count{channel="sms"} 2.0' in lines


def test_failed_sends_are_timed_but_not_counted_as_sent() -> None:
    """send_failed() observes the duration only; the notification's fate is counted apart."""
    m = Metrics()
    m.send_failed("email", 30.0)
    lines = ours(scrape(m))
    assert 'shipment_notifier_send_duration_seconds_bucket{channel="email",le="10.0"} 0.0' in lines
    assert 'shipment_notifier_send_duration_seconds_bucket{channel="email",le="30.0"} 1.0' in lines
    assert not [line for line in lines if line.startswith("shipment_notifier_notifications")]


def test_store_calls_are_timed_by_call() -> None:
    """store_call() observes one duration under the call's name."""
    m = Metrics()
    m.store_call("claim", 0.0003)
    m.store_call("claim", 7.0)
    call = "store_call_duration_seconds"
    assert {
        f'{call}_bucket{{call="claim",le="0.00025"}} 0.0',
        f'{call}_bucket{{call="claim",le="0.0005"}} 1.0',
        f'{call}_bucket{{call="claim",le="5.0"}} 1.0',
        f'{call}_bucket{{call="claim",le="+Inf"}} 2.0',
        f'{call}_count{{call="claim"}} 2.0',
    } <= unprefixed(scrape(m))


def test_histograms_match_the_librarys() -> None:
    """The plain-number histograms give the same samples as prometheus_client's Histogram
    for the same values, bounds included."""
    rng = random.Random(7)
    values = [rng.uniform(0, 70) for _ in range(500)]
    values += [*SEND_BUCKETS, 0.0, 1e-9]
    m = Metrics()
    twin_registry = CollectorRegistry()
    twin = Histogram(
        "shipment_notifier_send_duration_seconds",
        "twin",
        ("channel",),
        buckets=SEND_BUCKETS,
        registry=twin_registry,
    )
    for value in values:
        m.send_failed("email", value)
        twin.labels("email").observe(value)
    expected = [
        line
        for line in generate_latest(twin_registry).decode().splitlines()
        if line.startswith("shipment_notifier_") and "_created" not in line
    ]
    got = [line for line in ours(scrape(m)) if "send_duration" in line]
    assert got == expected


def test_values_read_at_scrape_time() -> None:
    """Lag, records in flight and the retry backlog are read from the watched functions
    each time the registry is scraped."""
    now = [1_000.0]
    m = Metrics(wall_clock=lambda: now[0])
    lag = {("shipments", 0): 5, ("shipments", 1): 0}
    in_flight = [3]
    backlog: list[tuple[int, float | None]] = [(2, 940.0)]
    m.watch_lag(lambda: [(t, p, n) for (t, p), n in lag.items()])
    m.watch_in_flight(lambda: in_flight[0])
    m.watch_retry_backlog(lambda: backlog[0])
    assert ours(scrape(m))[-5:] == [
        'shipment_notifier_consumer_lag_records{partition="0",topic="shipments"} 5.0',
        'shipment_notifier_consumer_lag_records{partition="1",topic="shipments"} 0.0',
        "shipment_notifier_records_in_flight 3.0",
        "shipment_notifier_retry_records_waiting 2.0",
        "shipment_notifier_retry_oldest_waiting_age_seconds 60.0",
    ]
    lag[("shipments", 0)] = 1
    in_flight[0] = 0
    backlog[0] = (0, None)
    assert ours(scrape(m))[-5:] == [
        'shipment_notifier_consumer_lag_records{partition="0",topic="shipments"} 1.0',
        'shipment_notifier_consumer_lag_records{partition="1",topic="shipments"} 0.0',
        "shipment_notifier_records_in_flight 0.0",
        "shipment_notifier_retry_records_waiting 0.0",
        "shipment_notifier_retry_oldest_waiting_age_seconds 0.0",
    ]


def test_unwatched_values_are_absent() -> None:
    """Without a watched function a scrape-time metric is left out, not reported as zero."""
    text = "\n".join(scrape(Metrics()))
    for name in ("consumer_lag_records", "records_in_flight", "retry_records_waiting"):
        assert f"shipment_notifier_{name}" not in text


def test_a_failing_reader_drops_only_its_metric() -> None:
    """A watched function that raises leaves its metric out of that scrape; the scrape and
    every other metric go on."""
    m = Metrics()

    def broken() -> int:
        raise RuntimeError("consumer closed")

    m.watch_in_flight(broken)
    m.watch_retry_backlog(lambda: (4, None))
    m.record_handled("shipments", "skipped", "duplicate")
    lines = ours(scrape(m))
    assert "shipment_notifier_retry_records_waiting 4.0" in lines
    assert (
        "shipment_notifier_records_handled_total"
        '{outcome="skipped",reason="duplicate",topic="shipments"} 1.0'
    ) in lines
    assert not [line for line in lines if "records_in_flight" in line]


def test_label_sets_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bound, new label sets are counted under one set of ``other`` values; the
    sets already seen keep counting as themselves."""
    monkeypatch.setattr(metrics, "MAX_LABEL_SETS", 2)
    m = Metrics()
    for reason in ("a", "b", "c", "d", "a"):
        m.dead_letter(reason)
    for call in ("get", "put", "id-1", "id-2"):
        m.store_call(call, 0.001)
    lines = ours(scrape(m))
    assert [line for line in lines if line.startswith("shipment_notifier_dead_letters")] == [
        'shipment_notifier_dead_letters_published_total{reason="a"} 2.0',
        'shipment_notifier_dead_letters_published_total{reason="b"} 1.0',
        'shipment_notifier_dead_letters_published_total{reason="other"} 2.0',
    ]
    counts = [line for line in lines if "store_call_duration_seconds_count" in line]
    assert counts == [
        'shipment_notifier_store_call_duration_seconds_count{call="get"} 1.0',
        'shipment_notifier_store_call_duration_seconds_count{call="put"} 1.0',
        'shipment_notifier_store_call_duration_seconds_count{call="other"} 2.0',
    ]


def test_each_metrics_object_counts_alone() -> None:
    """Two Metrics in one process (two workers, two tests) never share a count."""
    first, second = Metrics(), Metrics()
    first.dead_letter("undecodable")
    assert not [line for line in ours(scrape(second)) if "dead_letters" in line]


def test_names_follow_the_conventions() -> None:
    """The scrape parses as Prometheus text; every worker metric has the prefix, counters
    end in _total and no label is an id."""
    m = Metrics(wall_clock=lambda: 10.0)
    m.record_handled("shipments", "notified")
    m.sent("email", 0.1, 9.0)
    m.notification("sms", "superseded")
    m.dead_letter("invalid_event")
    m.store_call("load", 0.001)
    m.sms_segments("ucs2", 3)
    m.watch_lag(lambda: [("shipments", 0, 1)])
    m.watch_in_flight(lambda: 1)
    m.watch_retry_backlog(lambda: (1, 5.0))
    families = list(text_string_to_metric_families("\n".join(scrape(m)) + "\n"))
    names = {f.name for f in families if not f.name.startswith("process_")}
    assert names == {
        "shipment_notifier_build_info",
        "shipment_notifier_records_handled",
        "shipment_notifier_notifications",
        "shipment_notifier_dead_letters_published",
        "shipment_notifier_sms_segments",
        "shipment_notifier_send_duration_seconds",
        "shipment_notifier_end_to_end_delay_seconds",
        "shipment_notifier_store_call_duration_seconds",
        "shipment_notifier_consumer_lag_records",
        "shipment_notifier_records_in_flight",
        "shipment_notifier_retry_records_waiting",
        "shipment_notifier_retry_oldest_waiting_age_seconds",
    }
    for family in families:
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        labels = {k for s in family.samples for k in s.labels}
        assert not {k for k in labels if "id" in k.split("_")}, family.name


def test_sms_segments_add_up_by_encoding() -> None:
    """Each accepted SMS adds its segments to its encoding's count."""
    m = Metrics()
    m.sms_segments("ucs2", 3)
    m.sms_segments("ucs2", 2)
    m.sms_segments("gsm7", 1)
    lines = ours(scrape(m))
    assert 'shipment_notifier_sms_segments_total{encoding="ucs2"} 5.0' in lines
    assert 'shipment_notifier_sms_segments_total{encoding="gsm7"} 1.0' in lines
