"""Label attribution in event time: Beam TestStream (late and out-of-order clicks) and the pure core."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to

from pipelines.beam.attribution import (
    CLICK_SCHEMA,
    FIRST_SEEN_SCHEMA,
    RECENT_SCHEMA,
    AttributeInEventTime,
    attribute,
    first_occurrences,
)
from pipelines.events import EVENT_SCHEMA

TestStream.__test__ = False  # a Beam class, not a pytest test class

T = 1_767_600_000_000
WINDOW_S = 1800
WINDOW_MS = WINDOW_S * 1000


def imp(i: str, t: int) -> dict:
    return {"type": "impression", "impression_id": i, "request_id": "r", "user_id": "u",
            "item_id": f"item{i}", "position": 0, "event_time": t}  # fmt: skip


def clk(i: str, t: int) -> dict:
    return {"type": "click", "impression_id": i, "user_id": "u", "item_id": f"item{i}", "event_time": t}


def stamped(event: dict) -> beam.window.TimestampedValue:
    return beam.window.TimestampedValue((event["user_id"], event), event["event_time"] / 1000)


def test_teststream_out_of_order_and_late_clicks() -> None:
    stream = (
        TestStream()
        # Out of order: b's click arrives before b's impression; it must still be attributed.
        .add_elements([stamped(clk("b", T + 10_000))])
        .add_elements([stamped(imp("a", T)), stamped(imp("b", T + 5_000)), stamped(imp("c", T + 6_000))])
        .add_elements([stamped(imp("a", T + 2_000))])  # a re-sent copy of a: a duplicate, not labelled
        .add_elements([stamped(clk("a", T + 60_000)), stamped(clk("x", T + 61_000))])
        .add_elements([stamped(clk("a", T + WINDOW_MS + 1))])  # a second click on a, after the window
        # The watermark passes every window: a, b labelled clicked, c labelled not clicked.
        .advance_watermark_to((T + 6_000 + WINDOW_MS + 1_000) / 1000)
        # Late: c's click (inside c's window in event time) arrives after c was labelled.
        .add_elements([stamped(clk("c", T + 100_000))])
        # x's click never finds its impression; once its window passed it is kept aside.
        .advance_watermark_to((T + 10 * WINDOW_MS) / 1000)
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        out = (
            p
            | stream
            | beam.ParDo(AttributeInEventTime(WINDOW_S))
            | beam.Map(lambda kv: (kv[0], kv[1]["impression_id"], kv[1].get("label", kv[1].get("reason"))))
        )
        assert_that(
            out,
            equal_to(
                [
                    ("labelled", "a", 1),
                    ("labelled", "b", 1),
                    ("labelled", "c", 0),
                    ("aside", "a", "after_window"),
                    ("aside", "x", "no_impression"),
                    ("aside", "c", "late"),
                    ("duplicate", "a", None),
                ]
            ),
        )


def _tables(imps: list[dict], clicks: list[dict]) -> tuple[pa.Table, pa.Table]:
    return pa.Table.from_pylist(imps, schema=EVENT_SCHEMA), pa.Table.from_pylist(clicks, schema=CLICK_SCHEMA)


def test_attribute_waits_for_the_window_and_keeps_state() -> None:
    imps, clicks = _tables(
        [imp("a", T), imp("b", T), imp("a", T + 1)], [clk("a", T + WINDOW_MS), clk("y", T + 5)]
    )
    checked = first_occurrences(imps, FIRST_SEEN_SCHEMA.empty_table(), 24 * 3600 * 1000)
    assert checked.duplicate.tolist() == [False, False, True]  # the second "a" is a duplicate
    imps = imps.filter(pa.array(~checked.duplicate))
    step = attribute(imps, clicks, RECENT_SCHEMA.empty_table(), WINDOW_MS, watermark_ms=T + WINDOW_MS)
    # Window not closed (rule is strict: impression_time + window < watermark): nothing labelled yet.
    assert step.labelled.num_rows == 0 and step.aside.num_rows == 0
    assert step.pending_impressions["impression_id"].to_pylist() == ["a", "b"]
    assert sorted(step.pending_clicks["impression_id"].to_pylist()) == ["a", "y"]

    later = attribute(
        step.pending_impressions, step.pending_clicks, step.recent, WINDOW_MS, watermark_ms=T + WINDOW_MS + 6
    )
    labels = {r["impression_id"]: (r["label"], r["click_time"]) for r in later.labelled.to_pylist()}
    assert labels == {"a": (1, T + WINDOW_MS), "b": (0, None)}  # a click exactly at the window edge counts
    assert [(r["impression_id"], r["reason"]) for r in later.aside.to_pylist()] == [("y", "no_impression")]
    assert later.pending_impressions.num_rows == 0 and later.pending_clicks.num_rows == 0
    assert sorted(later.recent["impression_id"].to_pylist()) == ["a", "b"]


def test_final_mode_labels_everything_and_sorts_out_bad_clicks() -> None:
    imps, clicks = _tables([imp("a", T)], [clk("a", T - 1), clk("a", T + WINDOW_MS + 1), clk("z", T)])
    step = attribute(imps, clicks, RECENT_SCHEMA.empty_table(), WINDOW_MS, watermark_ms=None)
    assert step.labelled.to_pylist()[0]["label"] == 0
    reasons = sorted(r["reason"] for r in step.aside.to_pylist())
    assert reasons == ["after_window", "before_impression", "no_impression"]


DAY_MS = 24 * 3600 * 1000


def test_first_occurrence_wins_and_a_reuse_after_the_window_is_new() -> None:
    """Copies within the dedup window of the surviving one are duplicates (ties: source offset); the
    window is measured from the survivor, so a reuse after it starts a new impression; other users'
    ids never collide; the state carried to the next step holds the latest survivor per id."""
    rows = [
        imp("a", T + 5),
        {**imp("a", T), "origin_source": "s", "origin_partition": 0, "origin_offset": 9},
        {**imp("a", T), "origin_source": "s", "origin_partition": 0, "origin_offset": 3},
        imp("a", T + DAY_MS),  # exactly at the window edge: still a duplicate
        imp("a", T + DAY_MS + 1),  # after the window of the survivor (T): a new impression
        imp("a", T + DAY_MS + 2),  # ...whose own copy is a duplicate of it
        {**imp("a", T + 7), "user_id": "other"},  # another user's "a": not a copy
    ]
    for r in rows:
        r.setdefault("origin_source", "s")
        r.setdefault("origin_partition", 0)
        r.setdefault("origin_offset", 100)
    from pipelines.beam.parse import SOURCED_EVENT_SCHEMA

    table = pa.Table.from_pylist(rows, schema=SOURCED_EVENT_SCHEMA)
    checked = first_occurrences(table, FIRST_SEEN_SCHEMA.empty_table(), DAY_MS)
    assert checked.duplicate.tolist() == [True, True, False, True, False, True, False]
    seen = {(r["user_id"], r["event_time"]) for r in checked.seen.to_pylist()}
    assert seen == {("u", T + DAY_MS + 1), ("other", T + 7)}

    # Carried over: the next step's copy of the survivor is a duplicate, the other user's id is new.
    later = pa.Table.from_pylist([imp("a", T + DAY_MS + 10), imp("b", T + 1)], schema=EVENT_SCHEMA)
    again = first_occurrences(later, checked.seen, DAY_MS)
    assert again.duplicate.tolist() == [True, False]



def test_a_copy_older_than_the_carried_survivor_is_the_duplicate() -> None:
    """A second log replayed into the same topics can hold, within the window, an older copy of an id an
    earlier step already kept: the kept one stays (it was labelled), the older copy is the duplicate, and
    an unrelated impression of the same step is untouched (it was flagged instead, or the step crashed)."""
    seen = pa.Table.from_pylist([{"user_id": "u", "impression_id": "x", "event_time": T + 10_000}],
                                schema=FIRST_SEEN_SCHEMA)
    new = pa.Table.from_pylist([imp("x", T + 5_000), imp("y", T + 1) | {"user_id": "v"}], schema=EVENT_SCHEMA)
    checked = first_occurrences(new, seen, DAY_MS)
    assert checked.duplicate.tolist() == [True, False]
    kept = {(r["user_id"], r["impression_id"], r["event_time"]) for r in checked.seen.to_pylist()}
    assert ("u", "x", T + 10_000) in kept and ("u", "x", T + 5_000) not in kept

def test_clicks_attach_to_the_reused_impression_they_follow() -> None:
    """Two impressions with one id (a reuse after the dedup window): each click attaches to the latest
    impression at or before it, so both are labelled from their own clicks."""
    imps, clicks = _tables(
        [imp("a", T), imp("a", T + 2 * DAY_MS)], [clk("a", T + 60_000), clk("a", T + 2 * DAY_MS + 5)]
    )
    step = attribute(imps, clicks, RECENT_SCHEMA.empty_table(), WINDOW_MS, watermark_ms=None)
    labels = sorted((r["event_time"], r["label"], r["click_time"]) for r in step.labelled.to_pylist())
    assert labels == [(T, 1, T + 60_000), (T + 2 * DAY_MS, 1, T + 2 * DAY_MS + 5)]
    assert step.aside.num_rows == 0
