"""Each adapter on its real sample (../shared/data) or fixture: valid events, documented exact counts."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from pipelines.adapters import ADAPTERS, adapt_file
from pipelines.adapters.common import Skipped
from pipelines.events import DeadLetter, validate_event
from pipelines.logfile import iter_lines

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
AVAZU_ROW = (b"1,0,14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,"
             b"96809ac8,711ee120,1,0,15704,320,50,1722,0,35,100084,79")


def _split(stream) -> tuple[list[dict], list[DeadLetter], list[Skipped]]:
    events, dead, skipped = [], [], []
    for item in stream:
        if isinstance(item, dict):
            events.append(validate_event(item))
        elif isinstance(item, DeadLetter):
            dead.append(item)
        else:
            skipped.append(item)
    return events, dead, skipped


def _kinds(events: list[dict]) -> Counter:
    return Counter(e["type"] for e in events)


def _clicks_follow_their_impressions(events: list[dict]) -> None:
    shown = {e["impression_id"]: e for e in events if e["type"] == "impression"}
    for click in (e for e in events if e["type"] == "click" and e["impression_id"] in shown):
        imp = shown[click["impression_id"]]
        assert click["event_time"] > imp["event_time"]
        assert (click["user_id"], click["item_id"]) == (imp["user_id"], imp["item_id"])


def test_taobao_stream_slice(shared_data: Path) -> None:
    path = shared_data / "taobao-userbehavior" / "stream_slice_2017-11-26.csv"
    events, dead, skipped = _split(adapt_file("taobao", path))
    # 96,168 complete lines + 1 truncated line (a real malformed record, dead-lettered, not dropped).
    assert [(d.offset, d.raw) for d in dead] == [(96_169, b"301780,543546,4181361,pv,15")]
    assert "timestamp" in dead[0].error and dead[0].source == str(path)
    assert len(skipped) == 10_395
    assert Counter(s.reason.split("'")[1] for s in skipped) == {"cart": 5_292, "fav": 2_959, "buy": 2_144}
    kinds = _kinds(events)
    assert kinds["click"] == 85_773  # one per pv
    _clicks_follow_their_impressions(events)

    # Negative sampling: each pv request = the clicked item + 4 distinct other items from the recent window.
    requests: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        if e["type"] == "impression":
            requests[e["request_id"]].append(e)
    assert len(requests) == 85_773
    clicked = {e["impression_id"] for e in events if e["type"] == "click"}
    window_items: dict[int, set[str]] = {}
    lines = [raw.split(b",")[1].decode() for _, raw in iter_lines(path)]
    short = []
    for request_id, shown in requests.items():
        line = int(request_id)
        items = [e["item_id"] for e in shown]
        assert [e["position"] for e in shown] == list(range(len(shown)))
        assert sum(e["impression_id"] in clicked for e in shown) == 1
        assert len(set(items)) == len(items)
        if len(shown) < 5:
            short.append(line)
        if line % 997 == 0:  # spot-check the window on a sample of requests
            window_items[line] = set(lines[max(0, line - 1 - 2_000) : line - 1])
            negatives = [e["item_id"] for e in shown if e["impression_id"] not in clicked]
            assert set(negatives) <= window_items[line]
    assert kinds["impression"] == 5 * 85_773 - sum(5 - len(requests[str(n)]) for n in short)
    assert short and max(short) < 20  # only while the window is still filling


def test_taobao_user_block(shared_data: Path) -> None:
    path = shared_data / "taobao-userbehavior" / "user_block_10k.csv"
    events, dead, skipped = _split(adapt_file("taobao", path))
    assert not dead
    assert len(skipped) == 536 + 212 + 206
    assert _kinds(events)["click"] == 9_046


def test_taobao_negatives_are_configurable_and_seeded(shared_data: Path) -> None:
    path = shared_data / "taobao-userbehavior" / "user_block_10k.csv"
    first = [e for e in adapt_file("taobao", path, negatives=2, seed=1) if isinstance(e, dict)]
    again = [e for e in adapt_file("taobao", path, negatives=2, seed=1) if isinstance(e, dict)]
    other = [e for e in adapt_file("taobao", path, negatives=2, seed=2) if isinstance(e, dict)]
    assert first == again != other
    assert max(e["position"] for e in first if e["type"] == "impression") == 2


def test_criteo_sample(shared_data: Path) -> None:
    total_impressions = total_clicks = 0
    for name in ("train.txt", "dev.txt", "test.txt"):
        path = shared_data / "criteo-sample" / name
        labels = [raw.split(b"\t", 1)[0] for _, raw in iter_lines(path)]  # independent parse of the label
        events, dead, skipped = _split(adapt_file("criteo", path))
        assert not dead and not skipped
        kinds = _kinds(events)
        assert kinds["impression"] == len(labels)
        assert kinds["click"] == labels.count(b"1")
        _clicks_follow_their_impressions(events)
        total_impressions += kinds["impression"]
        total_clicks += kinds["click"]
    assert total_impressions == 8_000
    assert round(total_clicks / total_impressions, 3) == 0.216
    impressions = [e for e in events if e["type"] == "impression"]
    assert all({"C1", "C26", "category"} <= e.keys() and e["user_id"].startswith("u") for e in impressions)
    # Integer features are kept as ints, and left out where Criteo has them missing.
    assert 0 < sum("I1" in e for e in impressions) < len(impressions)
    assert all(isinstance(e["I2"], int) for e in impressions if "I2" in e)


def test_avazu_sample(shared_data: Path) -> None:
    impressions = clicks = headers = 0
    hour_start = 1_413_849_600_000  # 2014-10-21 00:00 UTC
    for name in ("train.csv", "dev.csv", "test.csv"):
        events, dead, skipped = _split(adapt_file("avazu", shared_data / "avazu-sample" / name))
        assert not dead
        headers += len(skipped)
        kinds = _kinds(events)
        impressions += kinds["impression"]
        clicks += kinds["click"]
        assert all(hour_start <= e["event_time"] < hour_start + 3_600_000
                   for e in events if e["type"] == "impression")
        _clicks_follow_their_impressions(events)
    assert (impressions, clicks, headers) == (8_999, 1_563, 1)  # only train.csv has a header


def test_mind_fixture() -> None:
    events, dead, skipped = _split(adapt_file("mind", FIXTURES / "mind_behaviors.tsv"))
    assert not dead and not skipped
    impressions = [e for e in events if e["type"] == "impression"]
    clicks = [e for e in events if e["type"] == "click"]
    history = [c for c in clicks if c["impression_id"].startswith("h")]
    assert len(impressions) == 17
    assert len(clicks) - len(history) == 6
    # History becomes earlier clicks, once per user (U100 appears twice with the same history).
    assert [(c["user_id"], c["item_id"]) for c in history] == [
        ("U100", "N1"), ("U100", "N2"), ("U100", "N3"), ("U300", "N4"), ("U400", "N5"), ("U400", "N6")]
    first_seen = {}
    for e in impressions:
        first_seen.setdefault(e["user_id"], e["event_time"])
    assert all(c["event_time"] < first_seen[c["user_id"]] for c in history)
    assert [e["position"] for e in impressions if e["request_id"] == "5"] == [0, 1, 2, 3, 4]
    _clicks_follow_their_impressions(events)


def test_movielens_fixture() -> None:
    events, dead, skipped = _split(adapt_file("movielens", FIXTURES / "movielens_u.data"))
    assert not dead and not skipped
    assert _kinds(events) == {"impression": 16, "click": 7}
    assert all((e["rating"] >= 4) == any(c["impression_id"] == e["impression_id"] for c in events
               if c["type"] == "click") for e in events if e["type"] == "impression")
    ml1m = [e for e in ADAPTERS["movielens"]([(1, b"1::1193::5::978300760")], "ratings.dat")]
    assert _kinds(ml1m) == {"impression": 1, "click": 1}


def test_every_adapter_fills_hour_from_the_event_time_and_the_request_size() -> None:
    streams = {
        "mind": adapt_file("mind", FIXTURES / "mind_behaviors.tsv"),
        "movielens": adapt_file("movielens", FIXTURES / "movielens_u.data"),
        "avazu": ADAPTERS["avazu"]([(2, AVAZU_ROW)], "x.csv"),
        "criteo": ADAPTERS["criteo"]([(1, b"1" + b"\t5" * 13 + b"\tab" * 26)], "c.txt"),
        "taobao": ADAPTERS["taobao"]([(n, f"{n},{10 + n},7,pv,1511664908".encode()) for n in range(1, 4)],
                                     "t.csv"),
    }
    for fmt, stream in streams.items():
        impressions = [e for e in _split(stream)[0] if e["type"] == "impression"]
        assert impressions, fmt
        for e in impressions:
            assert e["hour"] == (e["event_time"] // 3_600_000) % 24, fmt
        sizes = Counter(e["request_id"] for e in impressions)
        assert all(e["request_size"] == sizes[e["request_id"]] for e in impressions), fmt


def test_mind_joins_news_categories_and_documents_the_request_size() -> None:
    news = FIXTURES / "mind_news.tsv"
    events, dead, _ = _split(adapt_file("mind", FIXTURES / "mind_behaviors.tsv", news=news))
    assert not dead
    impressions = {e["item_id"]: e for e in events if e["type"] == "impression"}
    assert (impressions["N10"]["category"], impressions["N10"]["subcategory"]) == ("sports", "football_nfl")
    assert impressions["N14"]["subcategory"] == "finance-companies"
    assert "category" not in impressions["N20"] and "subcategory" not in impressions["N20"]  # not in news.tsv
    history = {e["item_id"]: e for e in events if e["impression_id"].startswith("h")}
    assert history["N1"]["subcategory"] == "newsworld" and "category" not in history["N3"]
    request5 = [e for e in events if e["type"] == "impression" and e["request_id"] == "5"]
    assert [e["request_size"] for e in request5] == [5] * 5
    # Without news.tsv the events are the same apart from the joined fields.
    plain = _split(adapt_file("mind", FIXTURES / "mind_behaviors.tsv"))[0]
    side = ("category", "subcategory")
    assert [{k: v for k, v in e.items() if k not in side} for e in events] == plain


def test_a_bad_news_file_is_an_error_naming_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "news.tsv"
    bad.write_text((FIXTURES / "mind_news.tsv").read_text() + "N99\tsports\n")
    with pytest.raises(ValueError, match=r"news.tsv:8: expected 8 fields"):
        adapt_file("mind", FIXTURES / "mind_behaviors.tsv", news=bad)


def test_movielens_100k_joins_genres_and_demographics() -> None:
    events, dead, _ = _split(adapt_file("movielens", FIXTURES / "movielens_u.data",
                                        items=FIXTURES / "movielens_u.item",
                                        users=FIXTURES / "movielens_u.user"))
    assert not dead
    impressions = [e for e in events if e["type"] == "impression"]
    by_item = {e["item_id"]: e for e in impressions}
    assert by_item["302"]["category"] == "Crime"
    assert by_item["302"]["genres"] == "Crime|Film-Noir|Mystery|Thriller"
    assert by_item["86"]["genres"] == "Drama"  # its Latin-1 title does not stop the join
    assert "category" not in by_item["29"] and "genres" not in by_item["29"]  # no genre flag set
    assert "genres" not in by_item["1014"]  # not in u.item
    by_user = {e["user_id"]: e for e in impressions}
    assert {k: by_user["186"][k] for k in ("user_age", "user_gender", "user_occupation", "user_zip")} == {
        "user_age": 39, "user_gender": "F", "user_occupation": "executive", "user_zip": "00000"}
    assert "user_age" not in by_user["62"]  # not in u.user
    assert _kinds(events) == {"impression": 16, "click": 7}  # the join adds fields, never events


def test_movielens_1m_joins_genres_and_demographics() -> None:
    events, dead, _ = _split(adapt_file("movielens", FIXTURES / "movielens_ratings.dat",
                                        items=FIXTURES / "movielens_movies.dat",
                                        users=FIXTURES / "movielens_users.dat"))
    assert not dead
    impressions = [e for e in events if e["type"] == "impression"]
    assert len(impressions) == 5 and _kinds(events)["click"] == 3
    first = impressions[1]  # user 1, movie 661
    assert (first["category"], first["genres"]) == ("Animation", "Animation|Children's|Musical")
    assert (first["user_gender"], first["user_age"], first["user_occupation"]) == ("F", 1, "10")
    assert all(e["hour"] == (e["event_time"] // 3_600_000) % 24 for e in impressions)
    assert "genres" not in impressions[4]  # movie 9999 is not in movies.dat


def test_bad_movielens_side_files_are_errors(tmp_path: Path) -> None:
    users = tmp_path / "u.user"
    users.write_text("1|old|M|writer|55105\n")
    with pytest.raises(ValueError, match=r"u.user:1: field 'age' is not an integer"):
        adapt_file("movielens", FIXTURES / "movielens_u.data", users=users)
    items = tmp_path / "u.item"
    items.write_text("1|Title|||url|" + "|".join(["2"] * 19) + "\n")
    with pytest.raises(ValueError, match="genre flags"):
        adapt_file("movielens", FIXTURES / "movielens_u.data", items=items)


def test_a_good_avazu_row_converts() -> None:
    out = list(ADAPTERS["avazu"]([(2, AVAZU_ROW)], "x.csv"))
    assert [e["type"] for e in out] == ["impression"]
    assert (out[0]["item_id"], out[0]["page"], out[0]["device"]) == ("1fbe01fe", "site", "type1")


@pytest.mark.parametrize(
    ("fmt", "raw", "reason"),
    [
        ("taobao", b"1,2,3,view,1511664908", "unknown behavior_type"),
        ("taobao", b"1,2,3,pv", "expected 5 fields"),
        ("taobao", b"1,2,3,pv,-4", "timestamp"),
        ("taobao", b"1,2,3,pv,abc", "not an integer"),
        ("taobao", b"\xff,2,3,pv,1511664908", "not UTF-8"),
        ("criteo", b"1\t2\t3", "expected 40 fields"),
        ("criteo", b"2" + b"\t" * 39, "field 'label' = 2"),
        ("avazu", AVAZU_ROW.replace(b"14102100", b"14109900"), "not a valid YYMMDDHH"),
        ("avazu", AVAZU_ROW.replace(b",0,14102100", b",yes,14102100"), "field 'click'"),
        ("avazu", b"1,0,14102100" + b",x" * 20, "expected 24 fields"),
        ("mind", b"1\tU1\tyesterday\t\tN1-1", "time 'yesterday'"),
        ("mind", b"1\tU1\t11/11/2019 9:05:58 AM\t\tN1", "not <news id>-<0|1>"),
        ("mind", b"1\tU1\t11/11/2019 9:05:58 AM\t\t", "no impressions"),
        ("movielens", b"1\t2\tfive\t881250949", "field 'rating'"),
        ("movielens", b"1\t2\t5\t881250949000", "timestamp"),
    ],
)
def test_malformed_lines_become_dead_letters(fmt: str, raw: bytes, reason: str) -> None:
    out = list(ADAPTERS[fmt]([(7, raw)], "src.txt"))
    assert len(out) == 1 and isinstance(out[0], DeadLetter)
    assert (out[0].offset, out[0].raw, out[0].source) == (7, raw, "src.txt")
    assert reason in out[0].error
