"""`aup-milter log` and `aup-milter explain QUEUE_ID`: the audit stream read for people.

The stream (`keys.AUDIT_STREAM`) holds flat string fields, absent ones
missing; a few carry JSON (`JSON_FIELDS`). Everything that turns an event
into text is a pure function of the event (`table_row`, `describe`,
`explain_lines`, `record`); the two commands only read Redis around them.

Time bounds (`--since`, `--until`) become the stream's id bounds, so
XREVRANGE reads only that span; the other filters are applied here, in
batches of `BATCH` entries, `log` reading at most `LOG_SCAN_BOUND` of them.
`explain` reads newest first until the `--since` bound (the whole stream
by default: it is trimmed to about 8 days) or until it is well past the
transaction it found.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from aupmilter.audit import event_time
from aupmilter.exitcodes import EX_FAILURE, EX_OK, EX_UNAVAILABLE, EX_USAGE

if TYPE_CHECKING:
    from aupmilter.config import Config

Fields = Mapping[str, str]
Entry = tuple[str, Fields]
RedisFor = Callable[[], "tuple[str, Config | None]"]

BATCH = 1000
DEFAULT_LIMIT = 50
LOG_SCAN_BOUND = 200 * BATCH
"""`log` reads at most this many entries looking for matches, then says so."""
FOLLOW_BLOCK_MS = 1000
TRANSACTION_SPAN_S = 3600.0
"""`explain` stops this long before the oldest event of the queue id: no transaction lasts it."""
DEFAULT_RETENTION = "at least 7"
JSON_FIELDS = frozenset({"evidence", "warnings", "headers", "rcpt", "suppressed"})
SUPPRESSED_EVENTS = frozenset(
    {"recipient-suppressed", "suppressed-recipient-removed", "suppressed-recipient-refused"}
)
LADDER_SUBJECTS = {
    "sender-suspended": ("sender", "suspended"),
    "domain-suspended": ("domain", "suspended"),
    "tenant-terminated": ("tenant", "terminated"),
}
SUPPRESSION_CHANGES = {"suppress": "added to", "unsuppress": "removed from"}
"""store/suppression.py's events (`audit_fields`)."""
RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
TIME_FORM = "ISO 8601 (2026-12-01T10:00:00Z, 2026-12-01) or a time ago (30m, 2h, 7d)"
HEADERS = ("TIME (UTC)", "TENANT", "QUEUE ID", "STAGE", "EVENT/VERDICT", "RULE", "REPLY/REASON")
CAPS = (19, 16, 14, 6, 22, 22)
"""Widest each column but the last may grow; the last takes what the terminal has left."""
MIN_LAST = 16
SHRINKABLE = (1, 2, 4, 5)
"""TENANT, QUEUE ID, EVENT/VERDICT and RULE; the time and the stage keep their width."""
SHRUNK_MIN = 7


# --- the command line -----------------------------------------------------------------


def add_parser(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    log = commands.add_parser(
        "log", help="show audit events (verdicts, refusals, suppressions, automatic actions)"
    )
    config_option(log)
    log.add_argument("--redis", metavar="URL", help="Redis URL (default: from the config)")
    log.add_argument("--tenant", metavar="ID")
    log.add_argument(
        "--sender", metavar="ADDRESS", help="envelope sender (or the subject acted on)"
    )
    log.add_argument("--recipient", metavar="ADDRESS")
    log.add_argument("--queue-id", metavar="ID", dest="queue_id")
    log.add_argument(
        "--verdict", action="append", default=[], help="e.g. reject, would-reject; repeatable"
    )
    log.add_argument("--rule", metavar="RULE")
    log.add_argument(
        "--event", action="append", default=[], metavar="KIND", help="event kind; repeatable"
    )
    log.add_argument("--since", metavar="TIME", help=f"from TIME: {TIME_FORM}")
    log.add_argument("--until", metavar="TIME", help="up to TIME (same forms)")
    log.add_argument(
        "--limit",
        type=_positive,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"the newest N matching events (default {DEFAULT_LIMIT})",
    )
    log.add_argument("--json", action="store_true", help="one JSON object per line")
    log.add_argument("--follow", action="store_true", help="then wait for new events until Ctrl-C")

    explain = commands.add_parser(
        "explain", help="say in plain words what happened to one message, and why"
    )
    config_option(explain)
    explain.add_argument("--redis", metavar="URL", help="Redis URL (default: from the config)")
    explain.add_argument("queue_id", metavar="QUEUE_ID", help="the Postfix queue id")
    explain.add_argument("--since", metavar="TIME", help=f"look back only to TIME: {TIME_FORM}")
    explain.add_argument("--json", action="store_true", help="the events and the explanation")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, not {text!r}")
    return value


def run(args: argparse.Namespace, redis_for: RedisFor) -> int:
    """`log` or `explain`; `redis_for` gives the Redis URL and the config (cli.main)."""
    import redis

    from aupmilter.store.client import command_settings, connect

    prog = f"aup-milter {args.command}"
    now = time.time()
    bounds: dict[str, float | None] = {}
    for option in ("since", "until"):
        text = getattr(args, option, None)
        try:
            bounds[option] = None if text is None else parse_time(text, now)
        except TimeError as exc:
            print(f"{prog}: --{option}: {exc}", file=sys.stderr)
            return EX_USAGE
    since, until = bounds["since"], bounds["until"]
    if getattr(args, "follow", False) and until is not None:
        print(f"{prog}: --follow and --until do not go together", file=sys.stderr)
        return EX_USAGE
    url, config = redis_for()
    client = connect(command_settings(url, config.redis if config else None, 5.0))
    try:
        if args.command == "log":
            return _log(client, args, since, until)
        return _explain(client, args, since, retention_days(config))
    except (redis.RedisError, OSError) as exc:
        print(f"{prog}: cannot use Redis at {url}: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except KeyboardInterrupt:
        return EX_OK
    finally:
        client.close()


def retention_days(config: object | None) -> str:
    """What the stream keeps, in words: the config's `[audit] retention_days` when it has one."""
    days = getattr(getattr(config, "audit", None), "retention_days", None)
    return str(days) if isinstance(days, int | float) and days > 0 else DEFAULT_RETENTION


# --- time -----------------------------------------------------------------------------


class TimeError(ValueError):
    pass


def parse_time(text: str, now: float) -> float:
    """Unix seconds from ISO 8601 (UTC unless it says otherwise) or an amount ago (`2h`)."""
    value = text.strip()
    relative = RELATIVE.match(value)
    if relative:
        return now - int(relative.group(1)) * UNITS[relative.group(2)]
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise TimeError(f"cannot read the time {text!r}: expected {TIME_FORM}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def stream_id(seconds: float) -> str:
    """The stream id bound (milliseconds) of a time."""
    return str(max(0, int(seconds * 1000)))


def utc(seconds: float, zone: str = "") -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S") + zone


# --- the event as data ----------------------------------------------------------------


def decoded(name: str, value: str) -> object:
    """A JSON field's value decoded; anything else, or malformed JSON, as given."""
    if name not in JSON_FIELDS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def record(entry_id: str, fields: Fields) -> dict[str, object]:
    """The `--json` object: the id, every field, the JSON ones decoded (`ts` as given)."""
    out: dict[str, object] = {"id": entry_id}
    for name, value in fields.items():
        out[name] = decoded(name, value)
    return out


def kind(fields: Fields) -> str:
    """The event kind; an entry without one but with a verdict is a verdict."""
    return fields.get("event") or ("verdict" if "verdict" in fields else "?")


def addresses(fields: Fields, name: str) -> list[str]:
    """A JSON list field's strings; nothing when it is absent or not such a list."""
    value = decoded(name, fields.get(name, "[]"))
    if isinstance(value, list):
        return [str(item) for item in value]
    return []


@dataclass(frozen=True, slots=True)
class Filters:
    tenant: str | None = None
    sender: str | None = None
    recipient: str | None = None
    queue_id: str | None = None
    verdicts: frozenset[str] = field(default_factory=frozenset)
    rule: str | None = None
    events: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, args: argparse.Namespace) -> Filters:
        return cls(
            tenant=args.tenant,
            sender=args.sender,
            recipient=args.recipient,
            queue_id=args.queue_id,
            verdicts=frozenset(args.verdict),
            rule=args.rule,
            events=frozenset(args.event),
        )

    def match(self, fields: Fields) -> bool:
        if self.tenant is not None and fields.get("tenant") != self.tenant:
            return False
        if self.queue_id is not None and fields.get("queue_id") != self.queue_id:
            return False
        if self.rule is not None and fields.get("rule") != self.rule:
            return False
        if self.verdicts and fields.get("verdict") not in self.verdicts:
            return False
        if self.events and kind(fields) not in self.events:
            return False
        if self.sender is not None:
            wanted = self.sender.casefold()
            if wanted not in (fields.get(n, "").casefold() for n in ("sender", "subject")):
                return False
        if self.recipient is not None:
            wanted = self.recipient.casefold()
            found = [fields.get("recipient", ""), fields.get("address", "")]
            if wanted not in (a.casefold() for a in found + addresses(fields, "rcpt")):
                return False
        return True


# --- the table ------------------------------------------------------------------------


def summary(fields: Fields) -> str:
    """The REPLY/REASON cell: what a person reads first about the event."""
    what = kind(fields)
    detail = fields.get("detail", "")
    if what in ("recipient-refused", *SUPPRESSED_EVENTS):
        said = fields.get("reply") or fields.get("reason") or "on the suppression list"
        return f"{fields.get('recipient', '?')}: {said}"
    if "address" in fields and "source" in fields:
        return _joined(f"{fields['address']} ({fields['source']})", detail)
    if what in LADDER_SUBJECTS or what in ("lifted", "window-reset"):
        by = f"by {fields['by']}" if "by" in fields else ""
        return _joined(fields.get("subject", "?"), by, detail or fields.get("reason", ""))
    if what in ("auto-review", "auto-suspend"):
        return _joined(fields.get("measure", ""), detail)
    said = _joined(fields.get("reply", ""), fields.get("reason", ""), detail)
    if said == "-" and what == "verdict":
        count = fields.get("recipients")
        said = _joined(f"{count} recipients" if count else "", fields.get("class", ""))
    return said


def _joined(*parts: str) -> str:
    return "; ".join(p for p in parts if p) or "-"


def table_row(entry_id: str, fields: Fields) -> tuple[str, ...]:
    what = kind(fields)
    shown = fields.get("verdict", what) if what == "verdict" else what
    return (
        utc(event_time(entry_id, fields)),
        fields.get("tenant") or "-",
        fields.get("queue_id") or "-",
        fields.get("stage") or "-",
        shown,
        fields.get("rule") or "-",
        summary(fields),
    )


def column_widths(rows: Sequence[Sequence[str]], columns: int) -> tuple[int, ...]:
    """Each column as wide as its widest cell within its cap; the last fills the line.

    On a narrow terminal the widest of the shrinkable columns give way first,
    down to SHRUNK_MIN each, so that the last keeps MIN_LAST characters.
    """
    firsts = [min(cap, max(len(r[i]) for r in [HEADERS, *rows])) for i, cap in enumerate(CAPS)]
    if not rows:  # what --follow will print is not known yet
        firsts = list(CAPS)
    spare = columns - sum(firsts) - 2 * len(firsts) - MIN_LAST
    while spare < 0:
        widest = max(SHRINKABLE, key=lambda i: firsts[i])
        if firsts[widest] <= SHRUNK_MIN:
            break
        firsts[widest] -= 1
        spare += 1
    last = max(MIN_LAST, columns - sum(firsts) - 2 * len(firsts))
    return (*firsts, last)


def trim(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table_line(row: Sequence[str], widths: Sequence[int]) -> str:
    cells = [trim(c, w).ljust(w) for c, w in zip(row, widths, strict=True)]
    return "  ".join(cells).rstrip()


# --- explanations ---------------------------------------------------------------------


def evidence_words(value: object) -> str:
    """Evidence as a person reads it: a rate window's fill in words, other keys as `key value`."""
    if not isinstance(value, dict):
        return "" if value in ("", None) else f"evidence: {_plain(value)}"
    if {"window", "used", "limit"} <= value.keys():
        rest = {k: v for k, v in value.items() if k not in ("window", "used", "limit")}
        full = "full, " if _number(value["used"]) >= _number(value["limit"]) else ""
        unit = value.get("unit", "recipients")
        rest.pop("unit", None)
        said = f"window {value['window']} {full}{value['used']} of {value['limit']} {unit} used"
        return ", ".join([said, *_pairs(rest)])
    return ", ".join(_pairs(value))


def _pairs(value: Mapping[str, object]) -> list[str]:
    return [f"{k.replace('_', ' ')} {_plain(v)}" for k, v in value.items()]


def _plain(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, dict):
        return "(" + ", ".join(_pairs(value)) + ")"
    return str(value)


def _number(value: object) -> float:
    try:
        return float(str(value))
    except ValueError:
        return float("nan")


def _evidence(fields: Fields) -> str:
    return evidence_words(decoded("evidence", fields["evidence"])) if "evidence" in fields else ""


def _because(fields: Fields) -> str:
    """The reason and its evidence, without repeating a reason the reply already says."""
    reason = fields.get("reason", "")
    if reason and reason in fields.get("reply", ""):
        reason = ""
    return "; ".join(p for p in (reason, _evidence(fields)) if p)


def _rule(fields: Fields) -> str:
    return f" Rule: {fields['rule']}." if fields.get("rule") else ""


def _sentence(text: str) -> str:
    text = text.rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


def outcome(fields: Fields) -> str:
    """What the verdict did to the message, with why (`reason`, `evidence`) and the rule."""
    verdict = fields.get("verdict", "?")
    shadow = verdict.startswith("would-")
    action = verdict.removeprefix("would-")
    reply = fields.get("reply", "")
    because = _because(fields)
    if action == "accept":
        return _sentence(_delivered(fields)) + _rule(fields)
    if action == "quarantine":
        head = (
            "would have been held in the Postfix hold queue"
            if shadow
            else ("HELD in the Postfix hold queue")
        )
    elif action in ("reject", "tempfail"):
        verb = "would have been refused" if shadow else "REFUSED"
        head = verb + (f" with {reply}" if reply else "")
    else:
        head = f"would have been {action.replace('-', ' ')}" if shadow else action.upper()
        head += f" with {reply}" if reply else ""
    text = f"{head}: {because}" if because else head
    if action == "tempfail" and not shadow:
        text += " (temporary: the client may try again)"
    if shadow:
        text += " (shadow mode: the message passed)"
    return _sentence(text) + _rule(fields) + _warnings(fields)


def _delivered(fields: Fields) -> str:
    removed = addresses(fields, "suppressed")
    count = _count(fields.get("recipients", ""))
    if count is None:
        text = "DELIVERED"
    else:
        left = max(0, count - len(removed))
        text = f"DELIVERED to {left} recipient{'s' if left != 1 else ''}"
    if removed:
        text += f" ({len(removed)} removed: on the suppression list: {', '.join(removed)})"
    extras = []
    headers = addresses(fields, "headers")
    if headers:
        extras.append("headers added: " + ", ".join(headers))
    if fields.get("class"):
        extras.append(f"class {fields['class']}")
    warnings = _warnings(fields).strip()
    if warnings:
        extras.append(warnings.rstrip("."))
    return "; ".join([text, *extras])


def _count(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _warnings(fields: Fields) -> str:
    if "warnings" not in fields:
        return ""
    value = decoded("warnings", fields["warnings"])
    items = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    items = [i for i in items if i]
    return f" Warnings: {'; '.join(items)}." if items else ""


def headline(entry_id: str, fields: Fields, queue_id: str) -> str:
    """The sentence for a verdict: the message, who sent it, when, and what happened."""
    who = [f"tenant {fields['tenant']}"] if fields.get("tenant") else []
    if fields.get("auth"):
        who.append(f"login {fields['auth']}")
    sender = fields.get("sender")
    origin = f" from {sender or '<>'}" if "sender" in fields else ""
    origin += f" ({', '.join(who)})" if who else ""
    when = utc(event_time(entry_id, fields), "Z")
    return f"Message {queue_id}{origin} at {when}: {outcome(fields)}"


def describe(fields: Fields) -> str:
    """One event other than a verdict, in a sentence."""
    what = kind(fields)
    reply = fields.get("reply", "")
    if what == "recipient-refused":
        at = " at RCPT" if fields.get("stage", "rcpt") == "rcpt" else ""
        text = f"Recipient {fields.get('recipient', '?')} refused{at}"
        text += f" with {reply}" if reply else ""
        because = _because(fields)
        return _sentence(text + (f": {because}" if because else "")) + _rule(fields)
    if what in SUPPRESSED_EVENTS:
        refused = what.endswith("-refused") or fields.get("stage") == "rcpt"
        done = "refused at RCPT" if refused else "removed from the message"
        return f"Recipient {fields.get('recipient', '?')} {done}: on the suppression list."
    if what in LADDER_SUBJECTS:
        noun, done = LADDER_SUBJECTS[what]
        text = f"The {noun} {fields.get('subject', '?')} was {done} automatically"
        if fields.get("offence"):
            text += f" (offence {fields['offence']})"
        return _sentence(_with_why(text, fields))
    if what in ("auto-review", "auto-suspend"):
        done = "flagged for review" if what == "auto-review" else "suspended automatically"
        measure = fields.get("measure", "")
        rate = f" for its {measure.removesuffix('s')} rate" if measure else ""
        text = f"Tenant {fields.get('tenant', '?')} was {done}{rate}"
        counts = [f"{fields['events']} {measure or 'events'}"] if fields.get("events") else []
        counts += [f"{fields['delivered']} delivered"] if fields.get("delivered") else []
        text += f" ({', '.join(counts)})" if counts else ""
        return _sentence(_with_why(text, fields))
    if what == "lifted":
        by = f" by {fields['by']}" if fields.get("by") else ""
        subject = fields.get("subject", "?")
        return _sentence(_with_why(f"The automatic action on {subject} was lifted{by}", fields))
    if what == "window-reset":
        by = f" by {fields['by']}" if fields.get("by") else ""
        window, subject = fields.get("window", "?"), fields.get("subject", "?")
        return _sentence(f"Window {window} of {subject} was emptied{by}")
    if what in SUPPRESSION_CHANGES:
        tenant = f" of tenant {fields['tenant']}" if fields.get("tenant") else ""
        source = f" (source {fields['source']})" if fields.get("source") else ""
        done = SUPPRESSION_CHANGES[what]
        again = " (it already was)" if fields.get("new") == "0" else ""
        text = f"{fields.get('address', '?')} {done} the suppression list{tenant}{source}{again}"
        return _sentence(_with_why(text, fields))
    rest = [f"{k} {v}" for k, v in fields.items() if k not in ("event", "ts")]
    return _sentence(f"{what}: {', '.join(rest)}" if rest else what)


def _with_why(text: str, fields: Fields) -> str:
    why = "; ".join(p for p in (fields.get("detail", ""), _because(fields)) if p)
    return f"{text}: {why}" if why else text


def explain_lines(queue_id: str, entries: Sequence[Entry]) -> list[str]:
    """The explanation of a message from its events, oldest first: one headline per verdict,
    each other event on a line of its own with its time."""
    removed = [
        f["recipient"]
        for _, f in entries
        if kind(f) in SUPPRESSED_EVENTS and f.get("stage") == "eom" and f.get("recipient")
    ]
    lines: list[str] = []
    for entry_id, fields in entries:
        if kind(fields) == "verdict":
            if removed and "suppressed" not in fields:  # the verdict did not list them
                fields = {**fields, "suppressed": json.dumps(removed)}
            lines.append(headline(entry_id, fields, queue_id))
        else:
            lines.append(f"  {utc(event_time(entry_id, fields), 'Z')}: {describe(fields)}")
    if entries and not any(kind(f) == "verdict" for _, f in entries):
        lines.insert(0, f"Message {queue_id}: no verdict recorded; its events:")
    return lines


def unknown_message(queue_id: str, retention: str) -> str:
    return f"nothing is known about queue id {queue_id} in the audit trail (kept {retention} days)"


# --- reading the stream ---------------------------------------------------------------


def newest_first(
    client: Any, newest: str = "+", oldest: str = "-", bound: int | None = None
) -> Iterator[Entry]:
    """Entries from `newest` down to `oldest` (ids or ms, inclusive), BATCH at a time."""
    from aupmilter.store import keys

    top, read = newest, 0
    while bound is None or read < bound:
        count = BATCH if bound is None else min(BATCH, bound - read)
        batch = client.xrevrange(keys.AUDIT_STREAM, max=top, min=oldest, count=count)
        yield from batch
        read += len(batch)
        if len(batch) < count:
            return
        top = f"({batch[-1][0]}"


def _log(client: Any, args: argparse.Namespace, since: float | None, until: float | None) -> int:
    from aupmilter.store import keys

    filters = Filters.of(args)
    last_id = "0-0"
    if args.follow:
        top = client.xrevrange(keys.AUDIT_STREAM, count=1)
        last_id = top[0][0] if top else "0-0"
    newest = "+" if until is None else stream_id(until)
    oldest = "-" if since is None else stream_id(since)
    found: list[Entry] = []
    scanned = 0
    for entry in newest_first(client, newest, oldest, LOG_SCAN_BOUND):
        if scanned == 0 and until is None:
            last_id = entry[0]  # what came after the first read must not be printed twice
        scanned += 1
        if filters.match(entry[1]):
            found.append(entry)
            if len(found) >= args.limit:
                break
    found.reverse()
    if scanned >= LOG_SCAN_BOUND and len(found) < args.limit:
        print(
            f"aup-milter log: read the newest {LOG_SCAN_BOUND} events in range and stopped;"
            " --since/--until narrow the span",
            file=sys.stderr,
        )
    columns = shutil.get_terminal_size((120, 24)).columns
    widths = column_widths([table_row(*e) for e in found], columns)
    out = sys.stdout
    if not found:
        print("aup-milter log: no matching events", file=sys.stderr)
    try:
        if not args.json and (found or args.follow):
            print(table_line(HEADERS, widths), file=out)
        _print(found, args.json, widths, out)
        if args.follow:
            _follow(client, filters, last_id, args.json, widths, out)
    except BrokenPipeError:
        _quiet_stdout()
    return EX_OK


def _print(entries: Iterable[Entry], as_json: bool, widths: Sequence[int], out: TextIO) -> None:
    for entry_id, fields in entries:
        if as_json:
            print(json.dumps(record(entry_id, fields), ensure_ascii=False), file=out)
        else:
            print(table_line(table_row(entry_id, fields), widths), file=out)
    out.flush()


def _follow(
    client: Any,
    filters: Filters,
    last_id: str,
    as_json: bool,
    widths: Sequence[int],
    out: TextIO,
) -> None:
    """New entries after `last_id` as they come, until Ctrl-C (KeyboardInterrupt)."""
    from aupmilter.store import keys

    while True:
        answer = client.xread({keys.AUDIT_STREAM: last_id}, count=BATCH, block=FOLLOW_BLOCK_MS)
        for _stream, entries in answer or []:
            if entries:
                last_id = entries[-1][0]
            _print((e for e in entries if filters.match(e[1])), as_json, widths, out)


def _quiet_stdout() -> None:
    """The reader went away (`| head`): nothing more to say, and nothing at exit either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def gather(client: Any, queue_id: str, since: float | None) -> list[Entry]:
    """Every event of the queue id, and the events of its transaction recorded before
    Postfix named the message (same connection, no queue id, after that connection's
    previous verdict); oldest first."""
    oldest = "-" if since is None else stream_id(since)
    found: list[Entry] = []
    conns: set[str] = set()
    closed: set[str] = set()
    earliest: float | None = None
    for entry_id, fields in newest_first(client, "+", oldest):
        at = event_time(entry_id, fields)
        if earliest is not None and at < earliest - TRANSACTION_SPAN_S:
            break
        conn = fields.get("conn", "")
        if fields.get("queue_id") == queue_id:
            found.append((entry_id, fields))
            if kind(fields) == "verdict":
                # Later actions may name the message days after; its transaction is near.
                earliest = at if earliest is None else min(earliest, at)
                if conn:
                    conns.add(conn)
                    closed.discard(conn)
        elif conn in conns and conn not in closed:
            if kind(fields) == "verdict":
                closed.add(conn)  # the connection's previous transaction
            elif not fields.get("queue_id"):
                found.append((entry_id, fields))
    found.reverse()
    return found


def _explain(client: Any, args: argparse.Namespace, since: float | None, retention: str) -> int:
    entries = gather(client, args.queue_id, since)
    if not entries:
        print(f"aup-milter explain: {unknown_message(args.queue_id, retention)}", file=sys.stderr)
        return EX_FAILURE
    lines = explain_lines(args.queue_id, entries)
    if args.json:
        payload = {
            "queue_id": args.queue_id,
            "explanation": lines,
            "events": [record(*e) for e in entries],
        }
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        for line in lines:
            print(line)
    return EX_OK
