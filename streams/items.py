"""The item store: ``item_id -> float32 content vector`` (PinSage in the TransAct/PinnerFormer papers).

Actions refer to items by id; the models take one content vector per action (DESIGN.md "Item vectors").
Two implementations of one small interface (:class:`ItemLookup`):

* :class:`ItemStore`: RocksDB (rocksdict, raw mode: key = UTF-8 item id, value = little-endian float32
  bytes), used by the worker and anything long-running. The vector size is stored under the reserved key
  ``b"\\x00meta:dim"`` (item ids never contain NUL: the event parser rejects them).
* :class:`MemoryItemStore`: a dict + one numpy matrix, for training jobs and tests.

Both load the JSON-lines file written by ``actionstream simulate --items-out`` (and by
``actionstream data movielens``)::

    {"item_id": "i42", "vector": [0.12, -0.3, ...]}

A bad line (not JSON, missing fields, wrong size, NaN/inf) raises :class:`ItemFileError` naming the
file and line; nothing is half-loaded into a :class:`MemoryItemStore`, and an :class:`ItemStore` keeps
only complete batches written before the bad line (re-running the load is idempotent).

Items without a vector are not an error: :meth:`get_many` returns ``has_vec = False`` for them and the
model falls back to a learned hashed-id embedding, bucket ``hash_bucket(item_id, buckets)`` built on
:func:`stable_hash` (blake2b-64 of the UTF-8 id, so every process and every run agrees).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import orjson

from streams.errors import ActionstreamError

__all__ = ["ItemFileError", "ItemLookup", "ItemStore", "MemoryItemStore", "hash_bucket", "read_item_file",
           "stable_hash"]

_META_DIM = b"\x00meta:dim"


class ItemFileError(ActionstreamError):
    """An item-vector file is malformed. Operator action: fix the named line and load again."""


def stable_hash(item_id: str) -> int:
    """Stable unsigned 64-bit hash of an item id (blake2b-64 with a person tag, little-endian)."""
    digest = hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=8, person=b"item-id").digest()
    return int.from_bytes(digest, "little")


@functools.lru_cache(maxsize=1 << 16)
def hash_bucket(item_id: str, buckets: int) -> int:
    """Hashed-id embedding row of an item: ``1 + stable_hash(id) mod (buckets - 1)``; row 0 is padding.

    Memoised (64k most recent ids, ~10 MB): every batch of the realtime encoder and the scorer hashes its
    unique item ids, and a blake2b call (~3 us) was a fifth of encoding a batch of short sequences."""
    if buckets < 2:
        raise ValueError("hash buckets must be >= 2 (row 0 is padding)")
    return 1 + stable_hash(item_id) % (buckets - 1)


class ItemLookup(Protocol):
    """What feature building needs from an item store."""

    @property
    def dim(self) -> int: ...

    def get_many(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...


def read_item_file(path: Path | str, dim: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(item_id, vector float32 (D,))`` from a JSONL item file, validating every line.

    Raises:
        ItemFileError: with ``file:line`` and what is wrong; ``dim`` (if given, else the first line's
            size) must match on every line.
    """
    path = Path(path)
    if not path.is_file():
        raise ItemFileError(f"no item file at {path}")
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ItemFileError(f"{where}: not valid JSON ({exc})") from None
            if type(obj) is not dict:
                raise ItemFileError(f"{where}: expected a JSON object")
            item_id, vector = obj.get("item_id"), obj.get("vector")
            if type(item_id) is not str or not item_id or "\x00" in item_id:
                raise ItemFileError(f"{where}: 'item_id' must be a non-empty string without NUL")
            if type(vector) is not list or not vector:
                raise ItemFileError(f"{where}: 'vector' must be a non-empty list of numbers")
            try:
                with np.errstate(over="ignore"):  # too big for float32 -> inf, rejected below
                    vec = np.asarray(vector, dtype=np.float32)
            except (TypeError, ValueError):
                raise ItemFileError(f"{where}: 'vector' must contain only numbers") from None
            if vec.ndim != 1:
                raise ItemFileError(f"{where}: 'vector' must be a flat list")
            if dim is None:
                dim = int(vec.shape[0])
            if vec.shape[0] != dim:
                raise ItemFileError(f"{where}: vector has {vec.shape[0]} values, expected {dim}")
            if not np.isfinite(vec).all():
                raise ItemFileError(f"{where}: vector contains NaN or infinity")
            yield item_id, vec


class MemoryItemStore:
    """In-memory item vectors: ``index`` (id -> row) + ``matrix`` (n, D) float32."""

    def __init__(self, dim: int, items: Iterable[tuple[str, np.ndarray]] = ()) -> None:
        if dim < 1:
            raise ValueError("item vector dim must be >= 1")
        self._dim = dim
        self.index: dict[str, int] = {}
        rows: list[np.ndarray] = []
        for item_id, vec in items:
            self._check(vec)
            if item_id in self.index:
                rows[self.index[item_id]] = vec
            else:
                self.index[item_id] = len(rows)
                rows.append(vec)
        self.matrix = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)

    @classmethod
    def from_file(cls, path: Path | str) -> MemoryItemStore:
        items = list(read_item_file(path))
        if not items:
            raise ItemFileError(f"{path}: no items")
        return cls(int(items[0][1].shape[0]), items)

    @property
    def dim(self) -> int:
        return self._dim

    def _check(self, vec: np.ndarray) -> None:
        if vec.shape != (self._dim,):
            raise ValueError(f"vector shape {vec.shape} does not match store dim {self._dim}")

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.index

    def get(self, item_id: str) -> np.ndarray | None:
        row = self.index.get(item_id)
        return None if row is None else self.matrix[row].copy()

    def get_many(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors ``(n, D) float32`` (zeros where missing) and ``has_vec (n,) bool``."""
        rows = np.fromiter((self.index.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        has = rows >= 0
        out = np.zeros((len(ids), self._dim), np.float32)
        out[has] = self.matrix[rows[has]]
        return out, has


class ItemStore:
    """RocksDB-backed item vectors (rocksdict raw mode). Use as a context manager or call :meth:`close`.

    Args:
        path: the RocksDB directory (created if missing).
        dim: vector size; required for a new store, checked against a stored one.
        read_only: open without a write lock (many readers, e.g. several worker processes).
    """

    def __init__(self, path: Path | str, dim: int | None = None, *, read_only: bool = False) -> None:
        from rocksdict import AccessType, Options, Rdict

        self.path = Path(path)
        opts = Options(raw_mode=True)
        if read_only:
            if not self.path.exists():
                raise ItemFileError(f"no item store at {self.path}")
            self._db = Rdict(str(self.path), opts, access_type=AccessType.read_only())
        else:
            opts.create_if_missing(True)
            self._db = Rdict(str(self.path), opts)
        stored = self._db.get(_META_DIM)
        stored_dim = int(stored.decode()) if stored is not None else None
        if stored_dim is not None and dim is not None and stored_dim != dim:
            self._db.close()
            raise ValueError(f"item store {self.path} holds {stored_dim}-d vectors, asked for {dim}")
        if stored_dim is None and dim is not None and not read_only:
            if dim < 1:
                raise ValueError("item vector dim must be >= 1")
            self._db[_META_DIM] = str(dim).encode()
        self._dim = stored_dim if stored_dim is not None else dim

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise ValueError(f"item store {self.path} is empty and was opened without a dim")
        return self._dim

    def __enter__(self) -> ItemStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def _ensure_dim(self, d: int) -> None:
        if self._dim is None:
            self._dim = d
            self._db[_META_DIM] = str(d).encode()
        elif d != self._dim:
            raise ValueError(f"vector has {d} values, store holds {self._dim}-d vectors")

    def put(self, item_id: str, vector: Sequence[float] | np.ndarray) -> None:
        vec = np.asarray(vector, dtype="<f4")
        if vec.ndim != 1 or not np.isfinite(vec).all() or not item_id or "\x00" in item_id:
            raise ValueError("put() needs a non-empty id without NUL and a flat finite vector")
        self._ensure_dim(int(vec.shape[0]))
        self._db[item_id.encode("utf-8", "surrogatepass")] = vec.tobytes()

    def load_jsonl(self, path: Path | str, *, batch: int = 10_000) -> int:
        """Load (upsert) a JSONL item file with write batches; returns the number of items written."""
        from rocksdict import WriteBatch

        n = 0
        wb = WriteBatch(raw_mode=True)
        for item_id, vec in read_item_file(path, self._dim):
            self._ensure_dim(int(vec.shape[0]))
            wb.put(item_id.encode("utf-8", "surrogatepass"), vec.astype("<f4").tobytes())
            n += 1
            if n % batch == 0:
                self._db.write(wb)
                wb = WriteBatch(raw_mode=True)
        self._db.write(wb)
        return n

    def get(self, item_id: str) -> np.ndarray | None:
        raw = self._db.get(item_id.encode("utf-8", "surrogatepass"))
        return None if raw is None else np.frombuffer(raw, dtype="<f4").astype(np.float32)

    def get_many(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """One RocksDB multi-get. Returns vectors ``(n, D) float32`` (zeros where missing), ``has (n,) bool``."""
        dim = self.dim
        out = np.zeros((len(ids), dim), np.float32)
        has = np.zeros(len(ids), bool)
        if not ids:
            return out, has
        raws: list[bytes | None] = list(self._db.get([i.encode("utf-8", "surrogatepass") for i in ids]) or ())
        for k, raw in enumerate(raws):
            if raw is not None:
                out[k] = np.frombuffer(raw, dtype="<f4")
                has[k] = True
        return out, has

    def __len__(self) -> int:
        """Number of items (a full scan: for tests and tools, not the hot path)."""
        return sum(1 for k in self._db.keys() if k != _META_DIM)

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.get(item_id) is not None
