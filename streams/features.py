"""User features served by ``GET /v1/users/{user_id}/features``: pure functions, no Faust.

The response shape is the DESIGN.md contract::

    {"user_id": str, "realtime": [float, ...], "daily": [float, ...] | null, "daily_date": str | null,
     "daily_model_version": str | null, "sequence_length": int, "last_action_ts": int | null,
     "model_version": str, ...sequence statistics}

``realtime`` is the candidate-free TransAct user vector (TransAct, Xia et al., KDD 2023, sec. 3: the
realtime sequence encoder) and ``daily`` the PinnerFormer embedding of the daily batch job (Pancha et al.,
KDD 2022); the hybrid of the two is PinnerFormer's "realtime + daily" set-up. The statistics are ours, not
from either paper: cheap, interpretable signals that a ranking service can use before any model exists.

Sequence statistics (all computed in one pass over the stored sequence, newest first):

* ``counts``: ``{"1h": {action: n}, "24h": {action: n}, "window": {action: n}}`` - actions of each type
  whose event time lies within 1 h / 24 h / the sequence window (``window_days``) before ``now``. Every
  action of the vocabulary is present (0 when none). Counts are over the *stored* sequence, i.e. the last
  N actions: a very active user's counts saturate at N (default 100) - that is the state the worker keeps.
* ``seconds_since_last_action``: ``now - newest action`` in seconds (``null`` without history).
* ``seconds_since_last``: ``{action: seconds | null}`` per action type, from the newest action of that type
  in the stored sequence.

Where we differ / choices: windows and recency are relative to the wall clock ``now`` (the sequence's
own window is relative to its newest action, see :mod:`streams.sequence`); event times up to the parser's
future tolerance (5 min) can lie after ``now``: such actions count in every window and their recency is
clamped to 0. Actions stored with a code outside the current vocabulary (vocabulary shrunk after they
were stored) count in ``sequence_length`` but in no per-action statistic.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from typing import Any

from streams.sequence import Act, SequenceCodec

__all__ = ["HOUR_MS", "DAY_MS", "assemble_features", "sequence_stats", "vector_from_bytes"]

HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def sequence_stats(seq: Sequence[Act], now_ms: int, codec: SequenceCodec) -> dict[str, Any]:
    """Statistics of one user's stored sequence at time ``now_ms``.

    Args:
        seq: the stored sequence, newest first (``streams.sequence.decode`` output), at most N actions.
        now_ms: the wall-clock time the features are computed for, ms since the epoch.
        codec: gives the action vocabulary (codes are 1-based) and the window length.
    Returns:
        ``{"sequence_length", "last_action_ts", "seconds_since_last_action", "counts", "seconds_since_last"}``
        as described in the module docstring; JSON-serialisable.
    """
    names = codec.actions
    n_actions = len(names)
    c_1h = [0] * (n_actions + 1)  # index = action code; 0 = padding / unknown
    c_24h = [0] * (n_actions + 1)
    c_win = [0] * (n_actions + 1)
    last_ts: list[int | None] = [None] * (n_actions + 1)
    t_1h, t_24h, t_win = now_ms - HOUR_MS, now_ms - DAY_MS, now_ms - codec.window_ms
    for ts, _key, code, _surface, _duration, _item in seq:
        if not 0 < code <= n_actions:
            continue
        if last_ts[code] is None:  # newest first: the first one seen is the newest of its type
            last_ts[code] = ts
        if ts >= t_win:
            c_win[code] += 1
            if ts >= t_24h:
                c_24h[code] += 1
                if ts >= t_1h:
                    c_1h[code] += 1
    newest: int | None = seq[0][0] if seq else None
    return {
        "sequence_length": len(seq),
        "last_action_ts": newest,
        "seconds_since_last_action": _age_s(now_ms, newest),
        "counts": {
            "1h": dict(zip(names, c_1h[1:], strict=True)),
            "24h": dict(zip(names, c_24h[1:], strict=True)),
            "window": dict(zip(names, c_win[1:], strict=True)),
        },
        "seconds_since_last": {name: _age_s(now_ms, last_ts[i + 1]) for i, name in enumerate(names)},
    }


def _age_s(now_ms: int, ts: int | None) -> float | None:
    return None if ts is None else max(0, now_ms - ts) / 1000.0


def vector_from_bytes(blob: bytes | None) -> list[float] | None:
    """A stored float32 vector (little-endian ``array('f')`` / ``numpy.float32.tobytes()``) as a list.

    Args:
        blob: ``4 * D`` bytes, or ``None`` when nothing is stored.
    Raises:
        ValueError: when the length is not a multiple of 4.
    """
    if blob is None:
        return None
    if len(blob) % 4:
        raise ValueError(f"a float32 vector needs a multiple of 4 bytes, got {len(blob)}")
    return array("f", blob).tolist()


def assemble_features(user_id: str, seq: Sequence[Act], realtime: Sequence[float] | None,
                      daily_record: Mapping[str, Any] | None, model_version: str, now_ms: int,
                      codec: SequenceCodec) -> dict[str, Any]:
    """The ``GET /v1/users/{user_id}/features`` response body (DESIGN.md contract + statistics).

    Args:
        user_id: the user the features are for.
        seq: stored sequence, newest first (empty for a user without history).
        realtime: the TransAct realtime user vector ``[D_rt]`` float32 values, ``None`` before one is stored
            (served as ``[]``).
        daily_record: the daily-embedding record ``{"user_id", "model_version", "date", "vector": [D]}``
            (contracts_topics.md) or ``None`` (served as ``daily: null``).
        model_version: version of the realtime (TransAct) model serving this worker.
        now_ms: wall-clock time, ms since the epoch.
        codec: the worker's :class:`~streams.sequence.SequenceCodec`.
    Returns:
        a JSON-serialisable dict; a user with no history gets empty features, never an error.
    """
    daily = daily_record.get("vector") if daily_record else None
    out: dict[str, Any] = {
        "user_id": user_id,
        "realtime": list(realtime) if realtime is not None else [],
        "daily": list(daily) if daily is not None else None,
        "daily_date": daily_record.get("date") if daily_record else None,
        "daily_model_version": daily_record.get("model_version") if daily_record else None,
        "model_version": model_version,
    }
    out.update(sequence_stats(seq, now_ms, codec))
    return out
