"""MovieLens ratings, optionally joined with the movie and user files of the same release.

Ratings: 100K ``u.data`` (``user_id<TAB>item_id<TAB>rating<TAB>timestamp``, unix seconds) or the 1M/10M
``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``). Each rating is an impression of the movie to
the user (a request of one slot: position 0, ``request_size`` 1) at the rating time; a rating >=
``click_threshold`` (default 4) is a click, ``CLICK_DELAY_MS`` later. The rating is kept as an extra
integer field; ``hour`` is the UTC hour of the rating. Ids: impression id = request id = the 1-based line
number.

Side files (each optional; the layout is recognised per file by its ``::`` separator):

- ``items``: 100K ``u.item`` (``movie id|title|release date|video release date|IMDb URL|`` then 19 0/1
  genre flags in ``GENRES_100K`` order) or 1M ``movies.dat`` (``MovieID::Title::Genres``, genre names
  ``|``-joined). The movie's genres become ``genres`` (``|``-joined, in the file's order) and the first
  of them its ``category``. A movie with no genre flag set gets neither.
- ``users``: 100K ``u.user`` (``user id|age|gender|occupation|zip code``) or 1M ``users.dat``
  (``UserID::Gender::Age::Occupation::Zip-code``; there age is the release's age-group code and
  occupation a numeric code). They become ``user_age``, ``user_gender`` and ``user_occupation`` (as
  given); the zip code is kept as the extra string field ``user_zip``.

Ratings of movies or users missing from a given side file keep no side fields (no invented values).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipelines.adapters.common import (
    AdapterStream,
    BadLine,
    decode_line,
    hour_of,
    impressions_with_clicks,
    parse_int,
    read_side_table,
    require_id,
    split_fields,
)
from pipelines.events import MAX_EVENT_TIME_MS, MIN_EVENT_TIME_MS, validate_event

GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
               "Thriller", "War", "Western")
MAX_AGE = 200


def adapt(
    lines: Iterable[tuple[int, bytes]],
    source: str,
    click_threshold: int = 4,
    items: Path | str | None = None,
    users: Path | str | None = None,
) -> AdapterStream:
    """The events of a ratings file; side files are read first (a bad one is a ``ValueError`` naming its
    line, before anything is produced)."""
    movies = load_items(items) if items is not None else {}
    people = load_users(users) if users is not None else {}

    def parse(line_no: int, raw: bytes) -> tuple[dict, bool]:
        impression, rating = _parse(raw, line_no)
        impression.update(movies.get(impression["item_id"], {}))
        impression.update(people.get(impression["user_id"], {}))
        return validate_event(impression), rating >= click_threshold

    return impressions_with_clicks(lines, source, parse)


def _genre_fields(genres: list[str]) -> dict[str, str]:
    return {"category": genres[0], "genres": "|".join(genres)} if genres else {}


def _parse_item(text: str) -> tuple[str, dict[str, str]]:
    if "::" in text:
        movie, _title, names = split_fields(text, "::", 3)
        return require_id(movie, "MovieID"), _genre_fields([g for g in names.split("|") if g])
    fields = split_fields(text, "|", 5 + len(GENRES_100K))
    flags = fields[5:]
    if any(f not in ("0", "1") for f in flags):
        raise BadLine("genre flags must be 0 or 1")
    genres = [g for g, flag in zip(GENRES_100K, flags, strict=True) if flag == "1"]
    return require_id(fields[0], "movie id"), _genre_fields(genres)


def _parse_user(text: str) -> tuple[str, dict[str, Any]]:
    if "::" in text:
        user, gender, age, occupation, zip_code = split_fields(text, "::", 5)
    else:
        user, age, gender, occupation, zip_code = split_fields(text, "|", 5)
    side = {"user_age": parse_int(age, "age", 0, MAX_AGE), "user_gender": gender,
            "user_occupation": occupation, "user_zip": zip_code}
    return require_id(user, "user id"), {k: v for k, v in side.items() if v != ""}


def load_items(path: Path | str) -> dict[str, dict[str, str]]:
    """u.item / movies.dat as {movie id: {"category", "genres"}}."""
    return read_side_table(path, _parse_item)


def load_users(path: Path | str) -> dict[str, dict[str, Any]]:
    """u.user / users.dat as {user id: {"user_age", "user_gender", "user_occupation", "user_zip"}}."""
    return read_side_table(path, _parse_user)


def _parse(raw: bytes, line_no: int) -> tuple[dict, int]:
    text = decode_line(raw)
    fields = text.split("::") if "::" in text else text.split("\t")
    if len(fields) != 4:
        raise BadLine(f"expected 4 fields (user, item, rating, timestamp), got {len(fields)}")
    user, item, rating, ts = fields
    rating_value = parse_int(rating, "rating", 0, 10)
    seconds = parse_int(ts, "timestamp", MIN_EVENT_TIME_MS // 1000, MAX_EVENT_TIME_MS // 1000 - 1)
    impression = {
        "type": "impression",
        "impression_id": str(line_no),
        "request_id": str(line_no),
        "user_id": require_id(user, "user_id"),
        "item_id": require_id(item, "item_id"),
        "position": 0,
        "request_size": 1,
        "event_time": seconds * 1000,
        "hour": hour_of(seconds * 1000),
        "rating": rating_value,
    }
    return impression, rating_value
