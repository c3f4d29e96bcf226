"""The run lease of a run folder on an object store (`.ledger/lease.json`): one driver at a time, without a lock
file. Taken by a create-only write, or by a compare-and-swap over a lease that was released, not renewed within its
time to live, or held by a process of this machine that is gone; each taking starts a new generation. The holder
renews it by compare-and-swap: a holder whose swap finds another's version has lost it and must stop."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from pipeline.core.storage import AlreadyExists, Conflict, NotFound, Storage
from shards.layout import LEDGER_DIR

LEASE = f"{LEDGER_DIR}/lease.json"


class RunInProgress(RuntimeError):
    """Another driver holds the run's lease and renewed it within its time to live."""


class LeaseLost(RuntimeError):
    """The lease was taken over (this driver stalled past its time to live): it must stop writing."""


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _died_here(owner: str) -> bool:
    """The lease's holder was a process of this machine that is gone (a killed driver resubmitted on the same head
    node): its lease is free at once instead of after its time to live."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class Lease:
    store: Storage
    owner: str
    generation: int
    ttl_s: float
    etag: str
    clock: Callable[[], float] = field(default=time.time, repr=False)
    # The renewal thread and the driver (advance, release) swap the same version: one at a time.
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def body(self, released: bool = False) -> bytes:
        return json.dumps({"owner": self.owner, "generation": self.generation, "renewed_at": self.clock(),
                           "ttl_s": self.ttl_s, "released": released}).encode()

    def renew(self) -> None:
        with self._lock:
            try:
                self.etag = self.store.put(LEASE, self.body(), if_match=self.etag)
            except (Conflict, NotFound):
                if not self._still_ours():
                    raise LeaseLost(f"{self.store.url(LEASE)}: taken over by another driver") from None

    def _still_ours(self) -> bool:
        """A write whose reply was lost and whose retry found our own version there: still ours (its ETag kept)."""
        try:
            data, etag = self.store.get_versioned(LEASE)
        except NotFound:
            return False
        held = json.loads(data)
        if held.get("owner") == self.owner and held.get("generation") == self.generation:
            self.etag = etag
            return True
        return False

    @contextmanager
    def kept(self) -> Iterator["Lease"]:
        """Renew every quarter of the time to live while the block runs; released at its end. A renewal that finds
        the lease taken over stops renewing and is raised at the end (the block's writes belong to a dead attempt)."""
        stop, lost = threading.Event(), []

        def renew() -> None:
            while not stop.wait(self.ttl_s / 4):
                try:
                    self.renew()
                except LeaseLost as e:
                    lost.append(e)
                    return
                except Exception:  # a store hiccup: the next renewal tries again, well within the time to live
                    continue

        thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            if lost:
                raise lost[0]
            self.renew()  # still ours at the end (raises LeaseLost if not), then free
            self.release()

    def advance(self) -> int:
        """A new generation under the same lease: writers of the old one can no longer commit (a writer on a lost
        node may outlive its node for a moment). Returns it."""
        with self._lock:
            self.generation += 1
            self.renew()
            return self.generation

    def release(self) -> None:
        """Mark the lease free (a later run takes it at once); one taken over already is left as it is."""
        with self._lock:
            try:
                self.etag = self.store.put(LEASE, self.body(released=True), if_match=self.etag)
            except (Conflict, NotFound):
                pass


def take_lease(store: Storage, ttl_s: float = 600.0, clock: Callable[[], float] = time.time) -> Lease:
    """The run's lease with a new generation; raises RunInProgress while another driver holds it."""
    lease = Lease(store, owner_id(), 1, ttl_s, "", clock)
    try:
        lease.etag = store.put(LEASE, lease.body(), create_only=True)
        return lease
    except AlreadyExists:
        if lease._still_ours():  # the create's reply was lost and its retry found our own lease
            return lease
    data, etag = store.get_versioned(LEASE)
    held = json.loads(data)
    age = clock() - float(held.get("renewed_at", 0))
    if not held.get("released") and age < float(held.get("ttl_s", ttl_s)) and not _died_here(str(held.get("owner"))):
        raise RunInProgress(f"{store.root} is being written by {held.get('owner')} (lease renewed {age:.0f} s ago, "
                            f"time to live {held.get('ttl_s')} s)")
    lease.generation = int(held.get("generation", 0)) + 1
    try:
        lease.etag = store.put(LEASE, lease.body(), if_match=etag)
    except (Conflict, NotFound):
        if not lease._still_ours():
            raise RunInProgress(f"{store.root}: another driver took the lease just now") from None
    return lease


def lease_generation(store: Storage) -> int:
    try:
        return int(json.loads(store.get(LEASE)).get("generation", 0))
    except NotFound:
        return 0
