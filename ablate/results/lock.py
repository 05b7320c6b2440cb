"""One driver per results directory: a second `ablate run` on the same results refuses with a clear message.

Locally the lock is an flock on <results>/LOCK, which the kernel drops when the driver dies (even by
SIGKILL), so a killed run never blocks `ablate resume`. On an object store there is no flock: the lock is
a lease object refreshed every few seconds, and a lease not refreshed for STALE_AFTER_S is taken over.
Two drivers racing for a lease within the same second are caught by re-reading it after writing.
"""

from __future__ import annotations

import json
import threading
from typing import IO
import time
import uuid

from ..errors import UserError
from .storage import HEARTBEAT_S, STALE_AFTER_S, Store, host_info

LOCK = "LOCK"


class ResultsLock:
    def __init__(self, store: Store):
        self.store = store
        self.token = uuid.uuid4().hex
        self.since = time.strftime("%Y-%m-%d %H:%M:%S")
        self._file: IO[str] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False  # set when another driver took the lease over (this one was silent too long)

    def _info(self) -> dict:
        return {**host_info(), "token": self.token, "since": self.since, "heartbeat": time.time()}

    def _busy(self, holder: dict | None) -> UserError:
        who = (
            f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
            if holder
            else "another process"
        )
        return UserError(
            [
                f"{self.store.uri} is in use by another ablate run ({who}). Two runs on one results directory "
                "would train the same cells twice; wait for it to finish, or stop it (Ctrl-C, or `ablate cancel` "
                "for a submitted job), then run `ablate resume`."
            ]
        )

    def acquire(self) -> ResultsLock:
        if self.store.local:
            import fcntl

            path = self.store.local_path(LOCK)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(exist_ok=True)
            # The flock is held through a read-only descriptor and the holder is written with a short write:
            # no file of the results stays open for writing during the run, so a disk that fails or fills
            # can still be remounted read-only under it (and the run then stops cleanly).
            f = open(path)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    holder = json.loads(f.read() or "null")
                except json.JSONDecodeError:
                    holder = None
                f.close()
                raise self._busy(holder) from None
            with open(path, "w") as w:
                w.write(json.dumps(self._info()))
            self._file = f
            return self
        holder = self.store.read_json(LOCK)
        if holder and holder.get("token") != self.token and time.time() - holder.get("heartbeat", 0) < STALE_AFTER_S:
            raise self._busy(holder)
        self.store.write_text(LOCK, json.dumps(self._info()))
        time.sleep(1.0)  # a racing writer's lease would land within this window
        if (self.store.read_json(LOCK) or {}).get("token") != self.token:
            raise self._busy(self.store.read_json(LOCK))
        self._thread = threading.Thread(target=self._refresh, daemon=True, name="ablate-lock")
        self._thread.start()
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                holder = self.store.read_json(LOCK)
                if holder is not None and holder.get("token") != self.token:
                    self.lost = True  # never write over a driver that took over; the runner stops
                    return
                self.store.write_text(LOCK, json.dumps(self._info()))
            except OSError:
                pass  # a transient store error; the next beat retries

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            if (self.store.read_json(LOCK) or {}).get("token") == self.token:
                self.store.delete(LOCK)
            self._thread = None

    def __enter__(self) -> ResultsLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
