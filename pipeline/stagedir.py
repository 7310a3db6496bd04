"""One stage's directory, and the protocol every rerun and resume rests on.

    stages/<NN>_<name>/
      _stage.json                         name, fingerprint and config of the shards below
      part-<shard>-<k>.parquet            kept documents
      rejected/part-<shard>-<k>.parquet   dropped documents, with drop_reason and drop_stage
      <folder>/part-<shard>-<k>.parquet   what the stage's kind makes beside them (`StageKind.folders`;
                                          synth: instructions/, instructions/rejected/, rephrased/)
      _done/<shard>.json                  the shard's completion record, written last

The protocol, and the only code that follows it:
- The driver `prepare`s the stage: a directory whose `_stage.json` names another fingerprint is emptied;
  what is left are the completion records of this fingerprint whose files all exist.
- The driver reuses a record only while it is `reusable`: it names the shard's current input and that
  input's identity. Every other shard runs.
- A shard runs as `run(shard, compute, ...)`, in its Ray task or actor: `begin` removes whatever an
  earlier attempt left of it (its record first, then its files, kind folders included); `compute` writes
  the shard's files and returns its record; `finish` writes the record, atomically. Nothing else writes
  a record, so a shard is done exactly when its record is there. A compute that fails leaves no file.
- Once a stage's shards are known, `remove_stale` removes every file of any shard nothing feeds any more.

A StageDir holds only strings, so it pickles into every task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import fsspec

from pipeline.cputime import ShardClock
from pipeline.deletion import remove
from pipeline.jsonfile import read_json, write_json

log = logging.getLogger("winnow.run")

MARKER = "_stage.json"
DONE = "_done"
REJECTED = "rejected"
# What `finish` refuses a record without: what reruns, downstream stages and the manifest read.
RECORD_KEYS = ("shard", "fingerprint", "input", "outputs", "rejected", "rows_in", "rows_out")


class StageDir:
    """The directory of stage `name`, at `url` (a URL any worker can open), with the kind's `folders`."""

    def __init__(self, url: str, name: str, folders: Iterable[str] = ()) -> None:
        self.url = url.rstrip("/")
        self.name = name
        self.folders = tuple(folders)
        self.fs, path = fsspec.core.url_to_fs(self.url)
        self.path = path.rstrip("/")

    def __getstate__(self) -> dict[str, Any]:
        # The filesystem is made again from the URL where the StageDir lands: an S3 client, with its
        # sessions and connection pool, is not something to ship to every task.
        return {"url": self.url, "name": self.name, "folders": self.folders}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["name"], state["folders"])

    def __repr__(self) -> str:
        return f"StageDir({self.url!r}, {self.name!r}, folders={self.folders!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StageDir) and self.__getstate__() == other.__getstate__()

    def __hash__(self) -> int:
        return hash((self.url, self.name, self.folders))

    # -- paths (fs paths unless named *_url) ---------------------------------------------------------
    @property
    def dirname(self) -> str:
        """`<NN>_<name>`: how status, logs and the manifest name the directory."""
        return self.path.rsplit("/", 1)[-1]

    def file(self, relative: str) -> str:
        return f"{self.path}/{relative}"

    def file_url(self, relative: str) -> str:
        """A file of the stage as a URL any worker can open."""
        return f"{self.url}/{relative}"

    @property
    def marker(self) -> str:
        return self.file(MARKER)

    @property
    def rejected_dir(self) -> str:
        return self.file(REJECTED)

    def record_path(self, shard: str) -> str:
        return self.file(f"{DONE}/{shard}.json")

    def part(self, shard: str, folder: str = "") -> str:
        """The prefix of a shard's files (a writer adds `-<k>.parquet`), in the stage or one of its folders."""
        return self.file(f"{folder}/part-{shard}" if folder else f"part-{shard}")

    def parts(self, folder: str = "") -> list[str]:
        """Every finished part file in the stage (or in `folder`, such as `rejected`), sorted."""
        return sorted(self.fs.glob(self.file(f"{folder}/part-*.parquet" if folder else "part-*.parquet")))

    def _shard_files(self, shard: str | None = None) -> Iterator[str]:
        """Every file a shard (or every shard) may have here, its temporary files included."""
        pattern = f"part-{shard}-*" if shard is not None else "part-*"
        for folder in ("", REJECTED, *self.folders):
            yield from self.fs.glob(self.file(f"{folder}/{pattern}" if folder else pattern))

    # -- the driver's side ---------------------------------------------------------------------------
    def prepare(self, fingerprint: str, config: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Empty the directory if its shards belong to another fingerprint, mark it as this one's, and
        return the completion records of this fingerprint whose files all exist, by shard."""
        fs = self.fs
        if fs.exists(self.marker):
            if (read_json(fs, self.marker, damaged="missing") or {}).get("fingerprint") == fingerprint:
                return self.done(fingerprint)
            log.info("stage %s changed: recomputing it", self.name)
            fs.rm(self.path, recursive=True)
        fs.makedirs(self.file(DONE), exist_ok=True)
        write_json(fs, self.marker, {"name": self.name, "fingerprint": fingerprint, "config": config})
        return self.done(fingerprint)

    def fingerprint(self) -> str | None:
        """The fingerprint the shards on disk belong to (from `_stage.json`), or None."""
        return (read_json(self.fs, self.marker, damaged="missing") or {}).get("fingerprint")

    def records(self) -> dict[str, dict[str, Any]]:
        """Every readable completion record, by shard, whatever its fingerprint or files."""
        found = {}
        for path in self.fs.glob(self.file(f"{DONE}/*.json")):
            record = read_json(self.fs, path, damaged="missing")  # a damaged record: recomputed
            if isinstance(record, dict):
                found[path.rsplit("/", 1)[-1].removesuffix(".json")] = record
        return found

    def done(self, fingerprint: str) -> dict[str, dict[str, Any]]:
        """The completion records of `fingerprint` whose files are all there, by shard."""
        existing = set(self.parts()) | set(self.parts(REJECTED))
        done = {}
        for shard, record in self.records().items():
            if record.get("fingerprint") != fingerprint:
                continue
            files = ([self.file(n) for n in record.get("outputs", [])] +
                     [self.file(f"{REJECTED}/{n}") for n in record.get("rejected", [])])
            if all(p in existing for p in files) and all(self.fs.exists(self.file(f))
                                                         for f in record.get("files", [])):
                done[shard] = record
        return done

    @staticmethod
    def reusable(record: dict[str, Any], input_url: str, input_id: str) -> bool:
        """Whether a record from `done` still holds for this shard's input: same file, same identity."""
        return record.get("input") == input_url and record.get("input_id") == input_id

    def remove_stale(self, shards: Iterable[str]) -> list[str]:
        """Remove every file (record, parts, rejected, kind folders) of the shards not in `shards`;
        return those shards."""
        keep = set(shards)
        stale = set(self.records()) - keep
        for path in self._shard_files():
            shard = path.rsplit("/", 1)[-1].removeprefix("part-").rsplit("-", 1)[0]
            if shard not in keep:
                stale.add(shard)
        for shard in sorted(stale):
            self.clear(shard)
        return sorted(stale)

    # -- the task's side -----------------------------------------------------------------------------
    def clear(self, shard: str) -> None:
        """Remove a shard's record, then its files: a record never outlives a file it names."""
        if self.fs.exists(self.record_path(shard)):
            remove(self.fs, self.path, self.record_path(shard))
        for path in self._shard_files(shard):
            remove(self.fs, self.path, path)

    def begin(self, shard: str) -> None:
        """Before a shard computes: remove what an earlier attempt left, make the folders it writes to."""
        self.clear(shard)
        for folder in (REJECTED, *self.folders):
            self.fs.makedirs(self.file(folder), exist_ok=True)

    def finish(self, shard: str, record: dict[str, Any]) -> dict[str, Any]:
        """Write a shard's completion record, last and atomically: from now on the shard is done."""
        missing = [k for k in RECORD_KEYS if k not in record]
        if missing or record["shard"] != shard:
            raise ValueError(f"stage {self.name} shard {shard}: a completion record needs {', '.join(RECORD_KEYS)} "
                             f"for this shard (missing: {', '.join(missing) or 'none'}; shard {record.get('shard')})")
        write_json(self.fs, self.record_path(shard), record)
        return record

    def run(self, shard: str, compute: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        """begin -> compute -> finish, with the shard's wall and CPU time (child processes included) added
        to the record. A compute that raises leaves nothing of the shard behind."""
        clock = ShardClock()
        self.begin(shard)
        try:
            record = compute(*args)
        except BaseException:
            try:
                self.clear(shard)
            except OSError:  # a full or gone disk: the compute's own error is what the user needs
                pass
            raise
        spent = clock.read()
        return self.finish(shard, record | {"node": node_id(), "finished_at": round(time.time(), 3)} | spent)

    def failure(self, shard: str, input_url: str, error: BaseException | str) -> dict[str, str]:
        return shard_failure(self.name, shard, input_url, error)


def run_shard(stagedir: StageDir, shard: str, compute: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """What a Ray task or actor runs for every shard of every kind (see `StageDir.run`)."""
    return stagedir.run(shard, compute, *args)


def shard_failure(stage: str, shard: str, input_url: str, error: BaseException | str) -> dict[str, str]:
    """A failed shard as the manifest records it (the last line of its error), logged with its input."""
    lines = str(error).strip().splitlines()
    message = (lines[-1] if lines else ("unknown error" if isinstance(error, str) else type(error).__name__))[:500]
    log.error("stage %s shard %s (%s) failed: %s", stage, shard, input_url, message)
    return {"shard": shard, "input": input_url, "error": message}


def merge_counts(counts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum counters key by key, nested dicts level by level; values that are not numbers are left out."""
    out: dict[str, Any] = {}
    for one in counts:
        for key, value in one.items():
            if isinstance(value, dict):
                out[key] = merge_counts([out.get(key, {}), value])
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
    return dict(sorted(out.items()))


def node_id() -> str | None:
    """The Ray node that ran the shard, for provenance (None outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
