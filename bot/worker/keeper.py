"""The in-hand entry keeper: a living worker's entry is never reclaimed, however long its order takes."""
from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from redis.cluster import ClusterPipeline

from bot import lua
from bot.codec import text

log = logging.getLogger(__name__)


def keep_fresh(r: redis.Redis, stream: str, group: str, consumer: str, entry_ids: list[str]) -> list[str]:
    """Reset the idle time of ``consumer``'s pending ``entry_ids``; returns those it still owns."""
    if not entry_ids:
        return []
    return [text(kept) for kept in lua.run(r, "keep_fresh", [stream], [group, consumer, *entry_ids])]


class EntryKeeper:
    """A daemon thread that re-claims the entries this worker handles (XCLAIM JUSTID, only while
    they are still its own) every ``interval`` seconds, so their idle time never reaches claim-idle."""

    def __init__(self, r: redis.Redis, stream: str, group: str, consumer: str, interval: float) -> None:
        self.r, self.stream, self.group, self.consumer = r, stream, group, consumer
        self.interval = interval
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._keep_script = lua.script(r, "keep_fresh")  # its sha, for queueing it on a pipeline
        # held entries another consumer took (this worker stalled past claim-idle): checked before a
        # submit (still_holds) so no order is sent for a lost entry
        self.lost: set[str] = set()

    def hold(self, entry_id: str) -> None:
        with self._lock:
            self._held.add(entry_id)

    def release(self, entry_id: str) -> None:
        with self._lock:
            self._held.discard(entry_id)
            self.lost.discard(entry_id)

    def still_holds(self, entry_id: str) -> bool:
        """Re-claim ``entry_id`` now; False (and marked lost) when another consumer took it meanwhile."""
        with self._lock:
            if entry_id in self.lost:
                return False
        if keep_fresh(self.r, self.stream, self.group, self.consumer, [entry_id]):
            return True
        with self._lock:
            self.lost.add(entry_id)
        return False

    def queue_still_holds(self, pipe: Any, entry_id: str) -> None:
        """Queue ``still_holds(entry_id)``'s re-claim on ``pipe`` (one round trip with other reads);
        pass its reply to ``still_holds_after``. EVALSHA directly: a script registered on the
        pipeline would cost a SCRIPT EXISTS round trip on every execute."""
        if isinstance(pipe, ClusterPipeline):  # EVALSHA is refused there: see bot.lua.call
            pipe.execute_command("EVAL", self._keep_script.script, 1, self.stream, self.group, self.consumer, entry_id)
        else:
            pipe.evalsha(self._keep_script.sha, 1, self.stream, self.group, self.consumer, entry_id)

    def still_holds_after(self, entry_id: str, reply: Any) -> bool:
        """``still_holds`` from the reply of the command ``queue_still_holds`` queued."""
        if isinstance(reply, redis.exceptions.NoScriptError):  # Redis lost its scripts: load and ask again
            return self.still_holds(entry_id)
        if isinstance(reply, Exception):
            raise reply
        with self._lock:
            if entry_id in self.lost:
                return False
            if reply:
                return True
            self.lost.add(entry_id)
        return False

    def refresh(self) -> None:
        with self._lock:
            held = sorted(self._held)
        if not held:
            return
        kept = set(keep_fresh(self.r, self.stream, self.group, self.consumer, held))
        for entry_id in set(held) - kept:
            with self._lock:
                if entry_id not in self._held or entry_id in self.lost:
                    continue
                self.lost.add(entry_id)
            # not ours any more: acked (most often by this worker's own record, between its ack and
            # its release: nothing to say) or pending at another consumer, which reclaimed it
            owner = self._owner(entry_id)
            if owner is None:
                log.debug("worker %s: entry %s is acked", self.consumer, entry_id)
            else:  # harmless for the order (same client_order_id, one journal entry) but worth knowing
                log.warning("worker %s: entry %s was reclaimed by %s while in hand: this worker stalled or was "
                            "cut off from Redis longer than claim-idle", self.consumer, entry_id, owner)

    def _owner(self, entry_id: str) -> str | None:
        """The consumer that has ``entry_id`` pending now, None when it is acked."""
        try:
            rows = self.r.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        except redis.RedisError:
            return "another consumer (unknown: Redis did not answer)"
        return text(rows[0]["consumer"]) if rows else None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"keeper-{self.consumer}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception as exc:  # Redis down: the entries may age; the next round tries again
                log.warning("worker %s: could not keep in-hand entries fresh: %s", self.consumer, exc)
