"""Where a write task's shards go and how they join the run: a run folder on a filesystem every node sees (the tar
is written in place and committed under the ledger's lock, `shards/commit.py`), or a run folder on an object store
(the tar is written to node-local scratch, uploaded under its own name and committed create-only,
`shards/remote_ledger.py`). The shard writer and the dispatcher speak only to this interface."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from pipeline.core.records import Rejection
from pipeline.core.storage import Conflict, NotFound, Storage, is_remote
from shards import commit as local_commit
from shards import remote_ledger
from shards.layout import LEDGER_DIR, RunDir
from shards.tarwriter import ShardInfo

UPLOAD_SCRATCH = "prolongvid-upload-"  # a write task's tars before upload; a killed task's are swept on the node
FAULT_KILL_AFTER_COMMIT = "fault-kill-writer-after-commit"
FAULT_PAUSE_BEFORE_COMMIT = "fault-pause-writer-before-commit"
FAULT_WRITER_PID = "fault-writer-pid"  # the writer that waits to die with its node (kill_after_commit's `node`)
FAULT_HOOKS_VAR = "PROLONGVID_FAULT_HOOKS"


class LocalTarget:
    def __init__(self, root: str | Path):
        self.run = RunDir(root)

    def open(self) -> Path:
        """The folder the task's tars are written in (here: the run's shards/ itself)."""
        return self.run.make().shards

    def close(self) -> None:
        pass

    def committed_in(self, key: str) -> str | None:
        return local_commit.committed_in(self.run, key)

    def commit(self, generation: int, info: ShardInfo, rows: list[dict[str, Any]], fsync: bool
               ) -> tuple[ShardInfo | None, list[dict[str, Any]]]:
        return local_commit.commit_shard(self.run, generation, info, rows, fsync=fsync)

    def commit_rejects(self, generation: int, rejects: list[Rejection]) -> bool:
        return local_commit.commit_rejects(self.run, generation, rejects)

    def pause_before_commit(self) -> None:
        """The chaos tests' hook: while `.ledger/fault-pause-writer-before-commit` exists, every writer waits the
        seconds it names with its shard still open, so a test can take the writer's node away at that moment."""
        try:
            seconds = float((self.run.ledger / FAULT_PAUSE_BEFORE_COMMIT).read_text() or 0)
        except (FileNotFoundError, ValueError):
            return
        time.sleep(min(seconds, 60.0))

    def kill_after_commit(self) -> None:
        """The chaos tests' hook: if `.ledger/fault-kill-writer-after-commit` exists, the first writer to remove it
        dies at once (SIGKILL, as the OOM killer would), right after a commit and before its task ends. If the
        file says `node`, the writer instead writes its pid to `.ledger/fault-writer-pid` and waits for the test
        to take its whole node away."""
        marker = self.run.ledger / FAULT_KILL_AFTER_COMMIT
        try:
            mode = marker.read_text().strip()
            marker.unlink()
        except FileNotFoundError:
            return
        if mode == "node":
            (self.run.ledger / FAULT_WRITER_PID).write_text(str(os.getpid()))
            time.sleep(120.0)
        os.kill(os.getpid(), signal.SIGKILL)


class RemoteTarget:
    def __init__(self, url: str):
        self.url = url
        self._scratch: Any = None

    def open(self) -> Path:
        from pipeline.video.scratch import scratch_dir

        self.store = Storage(self.url)
        self._scratch = scratch_dir(UPLOAD_SCRATCH)
        return Path(self._scratch.name)

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def committed_in(self, key: str) -> str | None:
        return None  # a second copy is taken out when the driver settles the ledger, before readers see either

    def commit(self, generation: int, info: ShardInfo, rows: list[dict[str, Any]], fsync: bool
               ) -> tuple[ShardInfo | None, list[dict[str, Any]]]:
        local = Path(self._scratch.name) / info.name
        try:
            remote_ledger.commit_shard(self.store, generation, local, info, rows)
        finally:
            local.unlink(missing_ok=True)
        return info, rows

    def commit_rejects(self, generation: int, rejects: list[Rejection]) -> bool:
        return remote_ledger.commit_rejects(Storage(self.url), generation, rejects)

    def pause_before_commit(self) -> None:
        pass

    def kill_after_commit(self) -> None:
        """The chaos tests' hook (only with PROLONGVID_FAULT_HOOKS=1 in the worker's environment, so a real run
        pays no request for it): if `.ledger/fault-kill-writer-after-commit` is in the bucket, the first writer
        to swap it to `taken` (compare-and-swap: exactly one) dies at once, right after its commit."""
        if os.environ.get(FAULT_HOOKS_VAR) != "1":
            return
        marker = f"{LEDGER_DIR}/{FAULT_KILL_AFTER_COMMIT}"
        try:
            data, etag = self.store.get_versioned(marker)
            if data == b"taken":
                return
            self.store.put(marker, b"taken", if_match=etag)
        except (NotFound, Conflict):
            return
        os.kill(os.getpid(), signal.SIGKILL)


def shard_target(out_dir: str | Path) -> LocalTarget | RemoteTarget:
    return RemoteTarget(str(out_dir)) if is_remote(out_dir) else LocalTarget(out_dir)
