"""Bounce detection and analysis: hand-written DSNs, then the real-world corpus.

The hand-written messages pin the contract (what ingest relies on to mark a delivery
bounced and suppress an address); the corpus tests measure how much of the real world
that contract covers and guard the rates against regressions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailgate.bounces import BounceReport, analyse_bounce, is_bounce
from mailgate.parser import parse

from .conftest import CORPUS, corpus_missing

SISIMAI = CORPUS / "sisimai-set-of-emails"
ZAMMAD_MAIL = CORPUS / "zammad" / "test" / "data" / "mail"

POSTFIX_DSN = b"""\
Return-Path: <>
From: MAILER-DAEMON@mail.example.org (Mail Delivery System)
To: support@helpdesk.example.com
Subject: Undelivered Mail Returned to Sender
Message-Id: <20240101000001.ABC@mail.example.org>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="B1"

--B1
Content-Type: text/plain

This is the mail system at host mail.example.org.

<Jane.Doe@Example.NET>: host mx.example.net said: 550 5.1.1 User unknown

--B1
Content-Type: message/delivery-status

Reporting-MTA: dns; mail.example.org
Arrival-Date: Mon,  1 Jan 2024 00:00:00 +0000

Final-Recipient: rfc822; Jane.Doe@Example.NET
Original-Recipient: rfc822;jane.doe@example.net
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <jane.doe@example.net>: Recipient address
    rejected: User unknown

--B1
Content-Type: message/rfc822

Message-ID: <notify.42.7@helpdesk.example.com>
From: support@helpdesk.example.com
To: jane.doe@example.net
Subject: [Ticket#42] Your request

Hello.

--B1--
"""

DELAYED_DSN = b"""\
From: Mail Delivery Subsystem <MAILER-DAEMON@relay.example.org>
To: support@helpdesk.example.com
Subject: Warning: could not send message for past 4 hours
MIME-Version: 1.0
Content-Type: multipart/report; report-type="delivery-status"; boundary="B2"

--B2
Content-Type: text/plain

Your message has not been delivered yet; the server will keep trying.

--B2
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.org

Final-Recipient: RFC822; bob@slow.example.com
Action: delayed
Status: 4.4.7
Will-Retry-Until: Tue, 2 Jan 2024 00:00:00 +0000

--B2
Content-Type: text/rfc822-headers

Message-ID: <notify.43.1@helpdesk.example.com>
From: support@helpdesk.example.com
To: bob@slow.example.com
Subject: [Ticket#43] Update

--B2--
"""

QMAIL_FAILURE = b"""\
Return-Path: <>
From: MAILER-DAEMON@mx.example.jp
To: support@helpdesk.example.com
Subject: failure notice

Hi. This is the qmail-send program at mx.example.jp.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<carol@example.jp>:
192.0.2.7 does not like recipient.
Remote host said: 550 5.2.1 Mailbox disabled
Giving up on 192.0.2.7.

--- Below this line is a copy of the message.

Return-Path: <support@helpdesk.example.com>
Message-ID: <notify.44.3@helpdesk.example.com>
From: support@helpdesk.example.com
To: carol@example.jp
Subject: [Ticket#44] Reply

Hello.
"""

CUSTOMER_MAIL = b"""\
From: Dave <dave@example.com>
To: support@helpdesk.example.com
Subject: My order was undelivered
Message-ID: <abc@example.com>

Hi, my parcel never arrived.
"""

VACATION = b"""\
Return-Path: <>
From: Erin <erin@example.com>
To: support@helpdesk.example.com
Subject: Automatic reply: [Ticket#45] Update
Auto-Submitted: auto-replied

I am out of office until Monday.
"""


def test_postfix_dsn() -> None:
    message = parse(POSTFIX_DSN)
    assert is_bounce(message, "")
    assert is_bounce(message, "someone@example.org")  # the DSN type alone is decisive
    assert analyse_bounce(message) == BounceReport(
        message_ids=("notify.42.7@helpdesk.example.com",),
        recipients=(("jane.doe@example.net", "5.1.1", True),),
    )


def test_delayed_dsn_is_soft() -> None:
    message = parse(DELAYED_DSN)
    assert is_bounce(message, "<>")
    report = analyse_bounce(message)
    assert report.message_ids == ("notify.43.1@helpdesk.example.com",)
    assert report.recipients == (("bob@slow.example.com", "4.4.7", False),)


def test_qmail_failure_notice() -> None:
    message = parse(QMAIL_FAILURE)
    assert is_bounce(message, "<>")
    assert is_bounce(message, "bounce@mx.example.jp")  # MAILER-DAEMON + bounce subject
    report = analyse_bounce(message)
    assert report.message_ids == ("notify.44.3@helpdesk.example.com",)
    assert report.recipients == (("carol@example.jp", "5.2.1", True),)


def test_daemon_without_domain() -> None:
    raw = QMAIL_FAILURE.replace(b"From: MAILER-DAEMON@mx.example.jp", b"From: MAILER-DAEMON")
    raw = raw.replace(b"Subject: failure notice", b"Subject: Unzustellbar: [Ticket#44]")
    assert is_bounce(parse(raw), "relay@example.jp")


def test_postfix_delayed_without_code_is_soft() -> None:
    raw = QMAIL_FAILURE.replace(b"Remote host said: 550 5.2.1 Mailbox disabled\n", b"")
    raw = raw.replace(b"This is a permanent error; I've given up. ", b"")
    report = analyse_bounce(parse(raw))
    assert report.recipients == (("carol@example.jp", "", False),)


def test_customer_mail_is_not_a_bounce() -> None:
    # a bounce-like subject alone, from a person with a real envelope sender, is a ticket
    assert not is_bounce(parse(CUSTOMER_MAIL), "dave@example.com")


def test_null_sender_with_bounce_subject_is_a_bounce() -> None:
    assert is_bounce(parse(CUSTOMER_MAIL), "<>")


def test_vacation_with_null_sender_is_not_a_bounce() -> None:
    assert not is_bounce(parse(VACATION), "<>")


def test_analyse_non_bounce_is_empty() -> None:
    assert analyse_bounce(parse(VACATION)) == BounceReport(message_ids=(), recipients=())


# --------------------------------------------------------------------------------------
# Real-world corpus
# --------------------------------------------------------------------------------------

corpus = pytest.mark.skipif(not SISIMAI.is_dir(), reason=corpus_missing(SISIMAI))
_NOT_BOUNCES = {"vacation", "feedback", "delivered"}  # auto-replies, ARF reports, success DSNs


def _expected() -> dict[str, list[dict[str, object]]]:
    data = json.loads((SISIMAI / "EXPECTED-sisimai.json").read_text(encoding="utf-8"))
    return data["expected"]


@corpus
def test_sisimai_bounces(capsys: pytest.CaptureFixture[str]) -> None:
    """Detection share over every newline variant, and hard/soft agreement on LF files.

    Sisimai's ``hardbounce`` is reason-based (only unknown user/host and the like are
    hard; a full mailbox or a spam block answered with 5xx is soft), while mailgate calls
    every 5.x.x hard, so the agreement is measured but expected to be modest. Agreement
    with the permanence of Sisimai's status code measures the extraction itself.
    """
    detected = total = hard_agree = status_agree = status_total = records = 0
    misses: list[str] = []
    for key, recs in sorted(_expected().items()):
        if any(r["reason"] in _NOT_BOUNCES for r in recs):
            continue
        name = Path(key).name
        for folder in ("bsd", "dos", "mac"):
            path = SISIMAI / "maildir" / folder / name
            if not path.is_file():
                continue
            total += 1
            message = parse(path.read_bytes())
            if not is_bounce(message, ""):
                misses.append(f"maildir/{folder}/{name}")
                continue
            detected += 1
            if folder != "bsd":
                continue
            found = analyse_bounce(message).recipients
            for rec in recs:
                index = int(str(rec["index"])) - 1
                ours = found[index][2] if index < len(found) else None
                records += 1
                hard_agree += ours == rec["hardbounce"]
                if rec["status"]:
                    status_total += 1
                    status_agree += ours == str(rec["status"]).startswith("5")
    detection = detected / total
    hard_rate = hard_agree / records
    status_rate = status_agree / status_total
    with capsys.disabled():
        print(
            f"\nsisimai: is_bounce {detected}/{total} = {detection:.1%}; "
            f"hard/soft agrees with sisimai hardbounce {hard_agree}/{records} = {hard_rate:.1%}; "
            f"with its status class {status_agree}/{status_total} = {status_rate:.1%}\n"
            f"missed: {', '.join(misses)}"
        )
    assert detection >= 0.97
    assert hard_rate >= 0.38
    assert status_rate >= 0.75


@corpus
def test_sisimai_vacation_replies_are_not_bounces() -> None:
    paths = sorted((SISIMAI / "maildir" / "bsd").glob("rfc3834-*.eml"))
    assert len(paths) == 6
    vacation = {k for k, v in _expected().items() if any(r["reason"] == "vacation" for r in v)}
    assert vacation <= {f"maildir/bsd/{p.name}" for p in paths}
    assert [p.name for p in paths if is_bounce(parse(p.read_bytes()), "")] == []


@corpus
def test_sisimai_non_bounces() -> None:
    not_dir = SISIMAI / "maildir" / "not"
    for name in ("is-not-bounce-01.eml", "is-not-bounce-02.eml"):
        message = parse((not_dir / name).read_bytes())
        assert not is_bounce(message, message.header("Return-Path") or ""), name
    # filed under "not" because Sisimai cannot decode it, but it is a postmaster's
    # "mailbox full" notice with a null sender: it must not become a ticket
    assert is_bounce(parse((not_dir / "rb-issue-368-bug.eml").read_bytes()), "<>")


@pytest.mark.skipif(not ZAMMAD_MAIL.is_dir(), reason=corpus_missing(ZAMMAD_MAIL))
def test_zammad_no_false_positives() -> None:
    # 033 is a Postfix DSN and 052 a MAILER-DAEMON notice without DSN (see SOURCE.md)
    bounces = {"mail033-undelivered-mail-returned-to-sender-notification.box", "mail052.box"}
    detected = set()
    for path in sorted(ZAMMAD_MAIL.glob("*.box")):
        message = parse(path.read_bytes())
        if is_bounce(message, ""):
            detected.add(path.name)
        # a real sender is never a null sender
        if path.name not in bounces:
            assert not is_bounce(message, "sender@example.com"), path.name
    assert detected == bounces
    report = analyse_bounce(parse((ZAMMAD_MAIL / sorted(bounces)[0]).read_bytes()))
    assert report.recipients == (("not_existing@znuny.com", "5.1.1", True),)
    assert report.message_ids[0].startswith("notification.20150830145600.")
