"""What operators read and undo by hand: window fills and the senders that have them, an
audited window reset, the audit events behind automatic actions, the recent events.

Used by `aup-milter windows`, `tenant show` and `top`. Reads are pipelined and
bounded (SCAN and XREVRANGE counts); the one write, `reset_windows`, deletes
the window keys and adds its `window-reset` audit event in one pipeline. Not
MULTI: the audit stream has no tenant tag, so on Redis Cluster it lives on
another slot than the window keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from aupmilter.policy.limits import Scope, Window, WindowFill, recipient_key
from aupmilter.policy.window_view import fill_of
from aupmilter.store import keys
from aupmilter.store.suppression import queue_audit

SCAN_COUNT = 500
SENDER_SCAN_BOUND = 20_000
"""Keys SCAN may walk looking for per-sender window keys before it stops and says so."""
MAX_SENDERS = 200
EVENT_BATCH = 1000
EVIDENCE_SLACK_MS = 5_000
"""An action's event is looked for this close to the action's stored time."""
EVIDENCE_SCAN_BOUND = 20_000
"""Entries read, newest first, for an action with no stored time."""

Entry = tuple[str, Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class SenderScan:
    senders: tuple[str, ...]
    complete: bool
    """False when the scan stopped at a bound before it had seen every key."""


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class Inspection:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    # --- windows ----------------------------------------------------------------------

    def tenant_fields(self, tenant_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The hashes of the tenants, one pipelined read (missing ones left out)."""
        with self.client.pipeline(transaction=False) as pipe:
            for tenant_id in tenant_ids:
                pipe.hgetall(keys.tenant(tenant_id))
            found = pipe.execute()
        return {
            t: {str(k): str(v) for k, v in f.items()}
            for t, f in zip(tenant_ids, found, strict=True)
            if f
        }

    def fills(
        self, tenant_id: str, windows: Sequence[Window], sender: str, now_ms: int
    ) -> list[WindowFill]:
        """Each window's fill now (per-sender windows: of `sender`), one pipelined read."""
        with self.client.pipeline(transaction=False) as pipe:
            for window in windows:
                pipe.hgetall(keys.window_key(tenant_id, window, sender))
            flats = pipe.execute()
        return [fill_of(flat, w, now_ms) for flat, w in zip(flats, windows, strict=True)]

    def sender_form(self, tenant_id: str, windows: Sequence[Window], sender: str) -> str:
        """The sender as its keys spell it: as given, else normalised (domain lower-cased)
        when only that form has keys; as given when neither has."""
        normal = recipient_key(sender)
        per_sender = [w for w in windows if w.scope is Scope.SENDER]
        if normal == sender or not per_sender:
            return sender
        with self.client.pipeline(transaction=False) as pipe:
            for form in (sender, normal):
                pipe.exists(*(keys.window_key(tenant_id, w, form) for w in per_sender))
            given, normalised = pipe.execute()
        return normal if not given and normalised else sender

    def senders(
        self, tenant_id: str, windows: Sequence[Window] = (), bound: int = SENDER_SCAN_BOUND
    ) -> SenderScan:
        """Senders with per-sender window keys (of `windows`, or any), by a bounded SCAN."""
        head = keys.tagged(tenant_id) + "w:"
        wanted = {keys.window_suffix(w, "") for w in windows if w.scope is Scope.SENDER}
        found: set[str] = set()
        seen = 0
        cursor = 0
        while True:
            cursor, batch = self.client.scan(
                cursor, match=_glob_escape(head) + "*:s:*", count=SCAN_COUNT
            )
            for key in batch:
                suffix, sep, sender = str(key)[len(keys.tagged(tenant_id)) :].partition(":s:")
                if sep and (not wanted or f"{suffix}:s:" in wanted):
                    found.add(sender)
            seen += SCAN_COUNT
            if cursor == 0:
                return SenderScan(tuple(sorted(found))[:MAX_SENDERS], len(found) <= MAX_SENDERS)
            if seen >= bound or len(found) > MAX_SENDERS:
                return SenderScan(tuple(sorted(found))[:MAX_SENDERS], False)

    def window_keys(
        self, tenant_id: str, windows: Sequence[Window], sender: str | None
    ) -> list[str]:
        """The keys of `windows`: per-sender ones of `sender`, or of every sender (SCAN)."""
        found: list[str] = []
        for window in windows:
            if window.scope is Scope.TENANT or sender is not None:
                key = keys.window_key(tenant_id, window, sender or "")
                found.append(key)
                continue
            pattern = _glob_escape(keys.window_key(tenant_id, window, "")) + "*"
            found += [str(k) for k in self.client.scan_iter(match=pattern, count=SCAN_COUNT)]
        return list(dict.fromkeys(found))

    def reset_windows(
        self,
        tenant_id: str,
        windows: Sequence[Window],
        sender: str | None,
        now: float,
        label: str,
        by: str = "cli",
    ) -> tuple[int, dict[str, str] | None]:
        """Delete the windows' keys and audit it (`window-reset`) in the same pipeline.

        Returns the number of keys deleted and the event (None, and nothing
        written, when the windows were already empty). `label` names the
        windows in the event (a name, or `all`).
        """
        found = self.window_keys(tenant_id, windows, sender)
        existing = [k for k, n in zip(found, self._exist(found), strict=True) if n] if found else []
        if not existing:
            return 0, None
        subject = sender if sender is not None else tenant_id
        whose = f"sender {sender}" if sender is not None else f"tenant {tenant_id}"
        event = {
            "event": "window-reset",
            "tenant": tenant_id,
            "subject": subject,
            "window": label,
            "by": by,
            "ts": str(int(now)),
            "detail": f"window {label} of {whose} emptied by {by} ({len(existing)} keys)",
        }
        with self.client.pipeline(transaction=False) as pipe:
            pipe.delete(*existing)
            queue_audit(pipe, event, now)
            deleted, _id = pipe.execute()
        return int(deleted), event

    def _exist(self, found: Sequence[str]) -> list[int]:
        with self.client.pipeline(transaction=False) as pipe:
            for key in found:
                pipe.exists(key)
            return [int(n) for n in pipe.execute()]

    # --- the audit stream -------------------------------------------------------------

    def newest_events(self, since_ms: int, bound: int) -> list[Entry]:
        """Audit events from now back to `since_ms`, newest first, at most `bound`."""
        return list(self._newest("+", str(since_ms), bound))

    def _newest(self, top: str, oldest: str, bound: int) -> Iterator[Entry]:
        read = 0
        while read < bound:
            count = min(EVENT_BATCH, bound - read)
            batch: Any = self.client.xrevrange(keys.AUDIT_STREAM, max=top, min=oldest, count=count)
            for entry_id, fields in batch:
                yield str(entry_id), {str(k): str(v) for k, v in fields.items()}
            read += len(batch)
            if len(batch) < count:
                return
            top = f"({batch[-1][0]}"

    def event_near(
        self, at_s: int, match: Mapping[str, str], bound: int = EVIDENCE_SCAN_BOUND
    ) -> Entry | None:
        """The newest event whose fields include `match`, recorded near `at_s` (Unix
        seconds; 0: unknown, the newest `bound` events are searched instead)."""
        if at_s > 0:
            top = str(at_s * 1000 + EVIDENCE_SLACK_MS)
            oldest = str(max(0, at_s * 1000 - EVIDENCE_SLACK_MS))
            entries: Iterable[Entry] = self._newest(top, oldest, bound)
        else:
            entries = self._newest("+", "-", bound)
        for entry_id, fields in entries:
            if all(fields.get(k) == v for k, v in match.items()):
                return entry_id, fields
        return None
