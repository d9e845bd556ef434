"""`actionstream data movielens`: real MovieLens-100k ratings as Event v1 actions + item vectors.

Source: the copy of ML-100k that ships inside the ``recbole==1.2.1`` wheel
(``recbole/dataset_example/ml-100k/ml-100k.inter`` and ``.item``), installed with
``pip install --no-deps recbole==1.2.1`` (``make data-movielens`` does it). The package is located
with ``importlib.util.find_spec`` and never imported (recbole's own imports need its many dependencies).

Licence: MovieLens-100k is published by GroupLens Research (University of Minnesota) for research use;
it may not be redistributed without permission, and publications using it must cite F. M. Harper and
J. A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 5(4), 2015. This command only
converts the copy already on your machine; the output stays local (do not commit it).

Conversion (our choices; the TransAct paper does not use MovieLens):

* every rating ``(user, movie, r, t)`` is an ``impression`` at ``t`` (seconds -> ms) followed 1 ms later by
  an action: ``r >= 4`` -> ``save``, ``r == 3`` -> ``click``, ``r <= 2`` -> ``hide``. Event ids are
  ``ml-<user>-<movie>-<action>``, users ``u<id>``, items ``m<id>``; no surface.
* a *request* is a user's ratings within 24 h of the first one (train/eval with ``--request-ms 86400000``):
  the paper's "one ranking request" becomes "what the user rated that day", the sequence is everything
  rated before it, HIT@3 asks which of the day's movies were saved/clicked/hidden.
* item vectors (29-d): 19 genres (multi-hot, L2-normalised), release year scaled ``(y - 1980) / 20``
  clipped to [-3, 1], a one-hot decade bucket (<1940, 40s, 50s, 60s, 70s, 80s, 1990-94, 1995+) and an
  unknown-year flag. Many movies share genres and decade, so content vectors only partly identify an item.
* timestamps are the real 1997-1998 ones: the data is for offline training/eval (the live parser would
  reject events this old as ``ts_too_old``).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import orjson

from streams.errors import ActionstreamError
from streams.events import Event, encode_event

__all__ = ["GENRES", "convert", "find_ml100k", "item_vector", "rating_action"]

log = logging.getLogger(__name__)

HELP = "convert MovieLens-100k (from the recbole==1.2.1 wheel) into Event v1 actions + item vectors"

GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
DECADES = (1940, 1950, 1960, 1970, 1980, 1990, 1995)  # bucket edges
ITEM_DIM = len(GENRES) + 1 + len(DECADES) + 1 + 1


def find_ml100k() -> Path:
    """The ml-100k directory inside the installed recbole wheel (without importing recbole)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise ActionstreamError("recbole is not installed: run `make data-movielens` or "
                                "`.venv/bin/pip install --no-deps recbole==1.2.1`")
    path = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.inter").is_file():
        raise ActionstreamError(f"{path}/ml-100k.inter is missing: is this recbole 1.2.1?")
    return path


def rating_action(rating: float) -> str:
    """>= 4 save, 3 click, <= 2 hide."""
    return "save" if rating >= 4 else "click" if rating >= 3 else "hide"


def item_vector(year: int | None, genres: list[str]) -> np.ndarray:
    """The 29-d content vector of a movie (module docstring)."""
    v = np.zeros(ITEM_DIM, np.float32)
    g = [GENRES.index(x) for x in genres if x in GENRES]
    if g:
        v[g] = 1.0 / np.sqrt(len(g))
    base = len(GENRES)
    if year is None:
        v[-1] = 1.0
    else:
        v[base] = float(np.clip((year - 1980) / 20.0, -3.0, 1.0))
        v[base + 1 + int(np.searchsorted(DECADES, year, side="right"))] = 1.0
    return v


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="latin-1") as fh:
        header = [h.split(":")[0] for h in fh.readline().rstrip("\n").split("\t")]
        rows = [line.rstrip("\n").split("\t") for line in fh if line.strip()]
    return header, rows


def convert(source: Path, out: Path) -> dict[str, int]:
    """Write ``out/events.jsonl`` (time-ordered Event v1) and ``out/items.jsonl``; returns counts."""
    out.mkdir(parents=True, exist_ok=True)
    header, rows = _read_tsv(source / "ml-100k.inter")
    cols = {h: k for k, h in enumerate(header)}
    for need in ("user_id", "item_id", "rating", "timestamp"):
        if need not in cols:
            raise ActionstreamError(f"{source}/ml-100k.inter: no column {need!r} (header {header})")
    ratings = []
    bad = 0
    for r in rows:
        try:
            ratings.append((int(float(r[cols["timestamp"]])) * 1000, r[cols["user_id"]], r[cols["item_id"]],
                            float(r[cols["rating"]])))
        except (ValueError, IndexError):
            bad += 1
    if bad:
        log.warning("%d malformed rating lines skipped", bad)
    ratings.sort()
    counts: Counter[str] = Counter()
    with open(out / "events.jsonl", "wb") as fh:
        for ts, user, item, rating in ratings:
            action = rating_action(rating)
            for e in (Event(f"ml-{user}-{item}-impression", f"u{user}", f"m{item}", "impression", ts),
                      Event(f"ml-{user}-{item}-{action}", f"u{user}", f"m{item}", action, ts + 1)):
                fh.write(encode_event(e) + b"\n")
                counts[e.action] += 1
    iheader, irows = _read_tsv(source / "ml-100k.item")
    icols = {h: k for k, h in enumerate(iheader)}
    n_items = 0
    with open(out / "items.jsonl", "wb") as fh:
        for r in irows:
            r = r + [""] * (len(iheader) - len(r))
            year_s = r[icols["release_year"]].strip() if "release_year" in icols else ""
            year = int(year_s) if year_s.isdigit() else None
            genres = r[icols["class"]].split() if "class" in icols else []
            vec = item_vector(year, genres)
            fh.write(orjson.dumps({"item_id": f"m{r[icols['item_id']]}", "vector": [round(float(x), 5) for x in vec],
                                   "title": r[icols["movie_title"]] if "movie_title" in icols else "",
                                   "year": year, "genres": genres}) + b"\n")
            n_items += 1
    return {"ratings": len(ratings), "users": len({u for _, u, _, _ in ratings}), "items": n_items,
            **{f"events_{k}": v for k, v in sorted(counts.items())}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None, help="output directory (default data/movielens)")
    p.add_argument("--source", type=Path, default=None, help="ml-100k directory (default: the installed "
                   "recbole wheel's dataset_example/ml-100k)")


def run(args: argparse.Namespace) -> int:
    from transact.settings import MovieLensSettings

    s = MovieLensSettings.load(out=args.out, source=args.source)
    for a in ("impression", "save", "click", "hide"):
        if a not in s.actions:
            raise ActionstreamError(f"the action vocabulary lacks {a!r} (ACTIONSTREAM_ACTIONS)")
    source = s.source or find_ml100k()
    counts = convert(Path(source), s.out)
    log.info("MovieLens-100k from %s: %s", source, counts)
    print(f"wrote {s.out / 'events.jsonl'} and {s.out / 'items.jsonl'} ({ITEM_DIM}-d): {counts}\n"  # noqa: T201
          f"train/eval with --request-ms 86400000 (a request = a user's ratings within 24 h)")
    return 0
