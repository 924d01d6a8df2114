"""Per-range shard files: Ray actors write what they embed to shared storage instead of sending it back.

With `--ray-shards` (wide poolings: flatten is 25,088 floats, ~100 KB, per image and backbone)
each actor writes its range's Rows to `<out>/<backbones>.ray-shards/rows-LO-HI.npz` (written as
`.partial`, then renamed, so a file under its final name is whole) and returns only the file's
name; the featx process reads the shards in row order and writes them through the one cache
writer (featx.extract.store), then deletes each. A killed featx process loses no actor's work:
the same command submits only the ranges that have no shard yet (and none before the caches'
n_done). Shards are numpy `.npz` files (never HDF5: store.py alone opens those); a plan file
holds a fingerprint of what was asked (backbones and weights, image size, batching, rows),
and shards of another plan are deleted, never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from featx.engines.work import Rows, Work

SUFFIX = ".ray-shards"
PLAN = "plan.json"


def shard_dir(out_dir: Path, keys) -> Path:
    """Where a group of backbones embedded together keeps its shards: beside their caches."""
    return Path(out_dir) / ("+".join(sorted(keys)) + SUFFIX)


def fingerprint(work: Work, range_rows: int) -> str:
    """What decides a shard's bits: the unit's identity (backbones, weights, size, decode, batching, rows) and ranges."""
    plan = [*work.identity(), int(range_rows)]
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()


class ShardStore:
    """One group's shard folder: prepared by the featx process, written by actors, read back in row order."""

    def __init__(self, folder: Path, plan: str):
        self.folder = Path(folder)
        self.plan = plan

    def prepare(self) -> None:
        """Make the folder; the shards of another plan are deleted first."""
        plan_file = self.folder / PLAN
        if self.folder.is_dir():
            try:
                same = json.loads(plan_file.read_text())["plan"] == self.plan
            except (OSError, ValueError, KeyError, TypeError):
                same = False
            if not same:
                shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not plan_file.exists():
            plan_file.write_text(json.dumps({"plan": self.plan}))

    def path(self, lo: int, hi: int) -> Path:
        return self.folder / f"rows-{lo:010d}-{hi:010d}.npz"

    def covers(self, lo: int, hi: int, first_rows: Mapping[str, int]) -> bool:
        """True when a whole shard of rows lo..hi holds every backbone's rows from its first row still to do."""
        try:
            firsts = _meta(self.path(lo, hi))["first"]
        except (OSError, ValueError, KeyError):
            return False
        return all(
            first >= hi or (key in firsts and firsts[key] <= max(first, lo)) for key, first in first_rows.items()
        )

    def write(self, rows: Rows) -> Path:
        """Rows to their shard, atomically (`.partial`, fsync, rename); returns the shard's path."""
        arrays: dict[str, np.ndarray] = {
            "ok": np.asarray(rows.ok, dtype=bool),
            "sha256": np.asarray(rows.sha256, dtype=str),
            "error_rows": np.asarray([row for row, _ in rows.errors], dtype=np.int64),
            "error_reasons": np.asarray([reason for _, reason in rows.errors], dtype=str),
        }
        members: list[list] = []
        for key, (first, embeddings) in rows.embeddings.items():
            for pooling, values in embeddings.items():
                name = f"e{len(members)}"
                arrays[name] = np.asarray(values)
                members.append([key, first, pooling, name])
        meta = {"start": rows.start, "first": {key: first for key, first, _, _ in members}, "members": members}
        arrays["meta"] = np.asarray(json.dumps({**meta, "worker": rows.worker}))
        final = self.path(rows.start, rows.stop)
        partial = final.with_name(final.name + ".partial")
        with open(partial, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, final)
        return final

    def read(self, lo: int, hi: int) -> Rows:
        with np.load(self.path(lo, hi), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            embeddings: dict[str, tuple[int, dict[str, np.ndarray]]] = {}
            for key, first, pooling, name in meta["members"]:
                embeddings.setdefault(key, (first, {}))[1][pooling] = data[name]
            errors = [(int(row), str(reason)) for row, reason in zip(data["error_rows"], data["error_reasons"])]
            rows = Rows(
                start=int(meta["start"]),
                ok=data["ok"],
                errors=errors,
                embeddings=embeddings,
                sha256=[str(digest) for digest in data["sha256"]],
                worker=meta.get("worker", ""),
            )
        if (rows.start, rows.stop) != (lo, hi):
            raise RuntimeError(f"shard {self.path(lo, hi)} holds rows {rows.start}..{rows.stop}")
        return rows

    def remove(self, lo: int, hi: int) -> None:
        self.path(lo, hi).unlink(missing_ok=True)

    def remove_all(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _meta(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"]))


def trimmed(rows: Rows, first_rows: Mapping[str, int]) -> Rows:
    """A shard's Rows as a run resumed at `first_rows` needs them: each backbone from its first row still to do.

    A shard written before the featx process was killed mid-merge may start a backbone earlier than its
    cache's n_done now is; the writer takes rows in order only, so those rows are dropped here.
    """
    start = max(rows.start, min(first_rows.values()))
    skip = start - rows.start
    embeddings = {}
    for key, (first, values) in rows.embeddings.items():
        if key not in first_rows:
            continue
        begin = max(first, first_rows[key], start)
        if begin < rows.stop:
            embeddings[key] = (begin, {pooling: array[begin - first :] for pooling, array in values.items()})
    return Rows(
        start=start,
        ok=rows.ok[skip:],
        errors=[(row, reason) for row, reason in rows.errors if row >= start],
        embeddings=embeddings,
        sha256=rows.sha256[skip:],
        worker=rows.worker,
    )
