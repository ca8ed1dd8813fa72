"""The sender footer over the MIME corpus (tests/corpus/mime): checked, inserted, bytes kept.

Each corpus message is judged on a check plan and on an insert plan. Where
the footer is inserted, the result must parse with `email`, show the
address and the unsubscribe link in every text part a reader sees, decode
the other parts (attachments, images, forwarded messages) to the same bytes
(sha256 pinned in the manifest), and keep every byte outside the rewritten
parts; a second pass finds nothing left to insert.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import tomllib
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aupmilter import replies
from aupmilter.message.footer import Walk, rewrite, scan
from aupmilter.message.wire import render_header_section
from aupmilter.policy.footer import (
    FooterMode,
    FooterPlan,
    Oversize,
    TenantIdentity,
    address_words,
    footer_text,
    judge,
    judge_identity,
    shows_address,
    unsubscribe_target,
    visible_text,
)
from aupmilter.policy.headers import HeaderField
from aupmilter.policy.plans import UnsubscribePlan
from aupmilter.stages.listmail import ListMail
from tests.messages import split_message

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "mime"
IDENTITY = TenantIdentity(
    "Initech, Inc.",
    ("4120 Freidrich Lane", "Austin, TX 78744", "USA"),
    "https://initech.example/contact",
)
LINK = "https://unsub.example/u/abcdef"
CHECK = FooterPlan(mode=FooterMode.CHECK)
INSERT = FooterPlan(mode=FooterMode.INSERT)


@dataclass(frozen=True)
class Entry:
    file: str
    about: str
    check: str
    insert: str
    parts: int
    rewritten: int
    kept: dict[str, str]


def entries() -> list[Entry]:
    manifest: dict[str, Any] = tomllib.loads((CORPUS / "manifest.toml").read_text())
    return [Entry(**{"kept": {}, **item}) for item in manifest["message"]]


def load(name: str) -> tuple[list[HeaderField], bytes]:
    # Stored with LF line ends; the MTA hands the milter CRLF.
    raw = (CORPUS / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return split_message(raw)


def parsed(fields: list[HeaderField], body: bytes) -> EmailMessage:
    raw = render_header_section(fields) + b"\r\n" + body
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def readable_parts(message: EmailMessage) -> list[EmailMessage]:
    found: list[EmailMessage] = []
    stack = [message]
    while stack:
        part = stack.pop(0)
        if part.get_content_type() == "message/rfc822":
            continue  # someone else's message
        if part.is_multipart():
            stack[0:0] = [p for p in part.iter_parts() if isinstance(p, EmailMessage)]
        elif part.get_content_type() in ("text/plain", "text/html") and (
            part.get_content_disposition() != "attachment"
        ):
            found.append(part)
    return found


def other_parts(message: EmailMessage) -> dict[str, list[str]]:
    """sha256 of each non-readable leaf part's decoded payload, by content type."""
    hashes: dict[str, list[str]] = {}
    readable = {id(p) for p in readable_parts(message)}
    for part in _leaves(message):
        if id(part) in readable:
            continue
        if part.get_content_type() == "message/rfc822":
            payload = part.as_bytes()
        else:
            decoded = part.get_payload(decode=True)
            payload = decoded if isinstance(decoded, bytes) else b""
        hashes.setdefault(part.get_content_type(), []).append(hashlib.sha256(payload).hexdigest())
    return hashes


def defects(message: EmailMessage) -> list[list[str]]:
    return [sorted(type(d).__name__ for d in part.defects) for part in message.walk()]


def _leaves(message: EmailMessage) -> list[EmailMessage]:
    if message.get_content_type() == "message/rfc822" or not message.is_multipart():
        return [message]
    return [leaf for part in message.iter_parts() for leaf in _leaves(part)]  # type: ignore[arg-type]


def outside(body: bytes, walk: Walk, indexes: tuple[int, ...]) -> list[bytes]:
    """The body cut at the rewritten parts: what must not change."""
    pieces, cursor = [], 0
    for index in indexes:
        part = walk.parts[index]
        pieces.append(body[cursor : part.start])
        cursor = part.end
    pieces.append(body[cursor:])
    return pieces


@pytest.mark.parametrize("entry", entries(), ids=lambda e: e.file)
def test_check_plan(entry: Entry) -> None:
    fields, body = load(entry.file)
    walk = scan(fields, body, IDENTITY, CHECK)
    judgement = judge(CHECK, IDENTITY, walk.scan, "initech")
    assert judgement.outcome == entry.check, (entry.about, walk.scan)
    assert len(walk.scan.parts) == entry.parts
    if entry.check == "present":
        assert judgement.verdict is None and not judgement.rewrite
    else:
        assert judgement.verdict is not None and judgement.verdict.reply is not None
        assert judgement.verdict.reply.code.startswith("5")
        assert not judgement.rewrite


@pytest.mark.parametrize("entry", entries(), ids=lambda e: e.file)
def test_insert_plan(entry: Entry) -> None:
    fields, body = load(entry.file)
    walk = scan(fields, body, IDENTITY, INSERT)
    judgement = judge(INSERT, IDENTITY, walk.scan, "initech")
    assert judgement.outcome == entry.insert, (entry.about, walk.scan)
    assert len(judgement.rewrite) == entry.rewritten
    if entry.insert != "inserted":
        assert (judgement.verdict is None) is (entry.insert == "present")
        return
    assert judgement.verdict is None
    before = parsed(fields, body)
    new = rewrite(body, walk, judgement.rewrite, footer_text(IDENTITY, LINK))
    assert new.fallback is None
    # Every byte outside the rewritten parts is kept, in order.
    kept = outside(body, walk, judgement.rewrite)
    assert new.body.startswith(kept[0]) and new.body.endswith(kept[-1])
    position = len(kept[0])
    for piece in kept[1:]:
        if not piece:
            continue  # the rewritten part ends the body
        found = new.body.find(piece, position)
        assert found > position, piece[:80]  # the rewritten part in between grew
        position = found + len(piece)
    assert position == len(new.body) or not kept[-1]
    after = parsed(fields, new.body)
    # No defect the original had not (12-missing-close-delimiter has one of its own).
    assert defects(after) == defects(before)
    texts = readable_parts(after)
    assert len(texts) == entry.parts
    for part in texts:
        content = part.get_content()
        is_html = part.get_content_type() == "text/html"
        assert shows_address(content, is_html, IDENTITY), content
        if part in readable_parts(after)[: entry.parts]:
            rewritten = not shows_address(
                readable_parts(before)[texts.index(part)].get_content(), is_html, IDENTITY
            )
            if rewritten:
                assert (f'href="{LINK}"' if is_html else f"Unsubscribe: {LINK}") in content
                assert "Initech, Inc." in content
    assert other_parts(after) == other_parts(before)
    for content_type, digest in entry.kept.items():
        if digest:
            assert digest in other_parts(after)[content_type]
    # The footer is now there: a second pass has nothing to add.
    again = scan(fields, new.body, IDENTITY, INSERT)
    assert judge(INSERT, IDENTITY, again.scan, "initech").outcome == "present"


def test_html_footer_goes_before_the_last_body_end_tag() -> None:
    fields, body = load("05-alternative.eml")
    walk = scan(fields, body, IDENTITY, INSERT)
    new = rewrite(body, walk, (1,), footer_text(IDENTITY, LINK)).body
    html_part = readable_parts(parsed(fields, new))[1].get_content()
    assert html_part.index("aup-footer") < html_part.index("</BODY>")
    assert html_part.rstrip().endswith("</html>")


def test_quoted_printable_html_keeps_its_other_lines() -> None:
    fields, body = load("14-html-qp-body.eml")
    walk = scan(fields, body, IDENTITY, INSERT)
    new = rewrite(body, walk, (0,), footer_text(IDENTITY, LINK)).body
    tail = body[body.index(b"</body>") :]
    assert new.endswith(tail)
    assert new.startswith(body[: body.index(b"</body>")])
    assert all(len(line) <= 76 for line in new.split(b"\r\n"))


def test_a_character_the_charset_lacks_falls_back() -> None:
    identity = TenantIdentity("Łódź Trading sp. z o.o.", ("ul. Piotrkowska 1", "Łódź"), "x@y.pl")
    for name, fallback, expected in (
        ("04-latin1-base64.eml", "ascii-folded", "Lódz Trading"),  # ó is Latin-1
        ("08-html-without-body.eml", None, "Łódź Trading"),  # UTF-8 holds it
        ("01-plain-ascii.eml", "ascii-folded", "Lodz Trading"),  # 7bit: ASCII only
    ):
        fields, body = load(name)
        walk = scan(fields, body, identity, INSERT)
        new = rewrite(body, walk, (0,), footer_text(identity, LINK))
        assert new.fallback == fallback
        content = readable_parts(parsed(fields, new.body))[0].get_content()
        assert expected in content


def test_html_in_a_narrow_charset_gets_character_references() -> None:
    identity = TenantIdentity("Łódź <Trading> & Co", ("ul. Piotrkowska 1",), "x@y.pl")
    fields, body = load("05-alternative.eml")  # its HTML part is 7bit us-ascii
    walk = scan(fields, body, identity, INSERT)
    new = rewrite(body, walk, (1,), footer_text(identity, LINK))
    assert new.fallback == "html-entities"
    assert b"&#321;&#243;d&#378; &lt;Trading&gt; &amp; Co" in new.body
    shown = visible_text(readable_parts(parsed(fields, new.body))[1].get_content(), True)
    assert "Łódź <Trading> & Co" in shown


def test_oversize_parts_are_checked_not_rewritten_or_refused_unread() -> None:
    fields, body = load("01-plain-ascii.eml")
    small = FooterPlan(mode=FooterMode.INSERT, max_part_bytes=1024)
    big_body = body + b"x" * 2000 + b"\r\n"
    walk = scan(fields, big_body, IDENTITY, small)
    judgement = judge(small, IDENTITY, walk.scan, "initech")
    assert judgement.outcome == "unrewritable" and judgement.verdict is not None
    assert judgement.verdict.reply is not None and judgement.verdict.reply.code == "550"
    refuse = FooterPlan(mode=FooterMode.INSERT, max_part_bytes=1024, oversize=Oversize.REFUSE)
    walk = scan(fields, big_body, IDENTITY, refuse)
    assert walk.scan.parts[0].has_address is None
    judgement = judge(refuse, IDENTITY, walk.scan, "initech")
    assert judgement.outcome == "oversize"
    assert judgement.verdict is not None and judgement.verdict.reply is not None
    assert judgement.verdict.reply.code == "552"


def test_too_many_parts_is_malformed() -> None:
    fields, body = load("09-nested.eml")
    few = FooterPlan(mode=FooterMode.CHECK, max_parts=4)
    walk = scan(fields, body, IDENTITY, few)
    assert walk.scan.malformed == "more than 4 MIME parts"
    verdict = judge(few, IDENTITY, walk.scan, "initech").verdict
    assert verdict is not None and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.status) == ("550", "5.6.0")


def test_missing_part_is_named_in_the_reply() -> None:
    fields, body = load("06-alternative-html-has-address.eml")
    verdict = judge(CHECK, IDENTITY, scan(fields, body, IDENTITY, CHECK).scan, "initech").verdict
    assert verdict is not None and verdict.reply is not None
    assert "text/plain part lacks it" in verdict.reply.text
    assert "4120 Freidrich Lane, Austin, TX 78744, USA" in verdict.reply.text


def test_identity_missing_is_a_temporary_failure() -> None:
    assert judge_identity(IDENTITY, "initech") is None
    verdict = judge_identity(TenantIdentity(name="Initech"), "initech")
    assert verdict is not None and verdict.reply is not None
    assert verdict.reply.code == "451" and "address, contact missing" in verdict.reply.text
    verdict = judge_identity(None, "initech")
    assert verdict is not None and verdict.reply == verdict.reply
    assert verdict.reply is not None and verdict.reply.is_temporary
    assert replies.FOOTER_NO_IDENTITY.status == "4.7.0"


def test_address_words_ignore_case_space_and_punctuation() -> None:
    assert address_words("4120 Freidrich Lane,\r\n  AUSTIN, TX 78744") == (
        " 4120 freidrich lane austin tx 78744 "
    )
    assert shows_address("4120 Freidrich\nLane - Austin TX 78744 U.S.A.", False, IDENTITY) is False
    assert shows_address("4120 freidrich lane. austin tx 78744, usa!", False, IDENTITY)
    html = "<p>4120&nbsp;Freidrich<br>Lane<script>x</script> Austin,&#32;TX 78744 <i>USA</i></p>"
    assert shows_address(html, True, IDENTITY)
    in_attribute = "<p title='4120 Freidrich Lane Austin TX 78744 USA'></p>"
    assert not shows_address(in_attribute, True, IDENTITY)


def test_markup_the_html_parser_refuses_is_read_tag_stripped() -> None:
    broken = "<![d>4120 Freidrich <b>Lane</b> Austin, TX&nbsp;78744 USA"
    assert shows_address(broken, True, IDENTITY)


def test_unsubscribe_target_prefers_https() -> None:
    header = "<mailto:u+t@unsub.example>, <https://unsub.example/u/t>"
    assert unsubscribe_target(header) == "https://unsub.example/u/t"
    assert unsubscribe_target("<mailto:u+t@unsub.example>") == "mailto:u+t@unsub.example"
    assert unsubscribe_target(None) is None and unsubscribe_target("garbage") is None


def test_plain_footer_is_base64_in_a_base64_part() -> None:
    fields, body = load("04-latin1-base64.eml")
    walk = scan(fields, body, IDENTITY, INSERT)
    new = rewrite(body, walk, (0,), footer_text(IDENTITY, LINK)).body
    lines = new.rstrip(b"\r\n").split(b"\r\n")
    assert all(len(line) <= 76 for line in lines)
    decoded = base64.b64decode(new).decode("latin-1")
    assert decoded.startswith("Très chère lectrice")
    assert decoded.endswith(f"Unsubscribe: {LINK}\r\n")


@pytest.mark.parametrize(
    ("mode", "stream", "needed"),
    [
        (FooterMode.OFF, None, False),
        (FooterMode.CHECK, None, True),
        (FooterMode.INSERT, "bulk", True),
        (FooterMode.INSERT, "transactional", False),  # never bulk: never footed
    ],
)
def test_the_body_is_collected_only_when_the_footer_may_need_it(
    mode: FooterMode, stream: str | None, needed: bool
) -> None:
    listmail = ListMail(
        tenant="initech",
        stream=stream,
        plan=UnsubscribePlan(),
        settings=None,
        identity=None,
        footer=FooterPlan(mode=mode),
    )
    assert listmail.needs_body is needed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from([e.file for e in entries()]),
    cut=st.integers(min_value=0, max_value=4000),
    noise=st.binary(max_size=40),
    at=st.integers(min_value=0, max_value=4000),
)
def test_damaged_mime_gets_an_answer_never_an_exception(
    name: str, cut: int, noise: bytes, at: int
) -> None:
    fields, body = load(name)
    damaged = body[:at] + noise + body[at:cut] if cut > at else body[:cut] + noise
    for plan in (CHECK, INSERT):
        walk = scan(fields, damaged, IDENTITY, plan)
        judgement = judge(plan, IDENTITY, walk.scan, "initech")
        if judgement.rewrite:
            rewritten = rewrite(damaged, walk, judgement.rewrite, footer_text(IDENTITY, LINK))
            assert len(rewritten.body) > len(damaged)
