"""Notification templates: every kind in every language, escaping, strictness, overrides."""

from __future__ import annotations

import copy
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from jinja2 import UndefinedError

from mailgate.config import HoursConfig
from mailgate.errors import ConfigError
from mailgate.hours import SupportHours
from mailgate.render import (
    CONTEXT_KEYS,
    KINDS,
    LANGUAGES,
    Renderer,
    builtin_templates_dir,
)

SUBJECT = "Drucker im 2. OG druckt nicht"
WITH_COMMENT = {
    "ticket_created",
    "new_ticket_follower",
    "agent_reply",
    "customer_reply",
    "ticket_moved",
    "agent_new_ticket",
    "emergency",
    "ticket_assigned",
}
# The acknowledgement gets the first comment too but does not echo it: short, and a pasted
# password is not mailed back out again.
SHOWS_COMMENT = WITH_COMMENT - {"ticket_created"}
MOVED = {"from": "Müller Logistik GmbH", "to": "Agentur Blau"}
_WAITING = {
    "id": 4711,
    "subject": SUBJECT,
    "status": "open",
    "priority": "urgent",
    "since": "03.12. 14:05",
    "organization": "Müller Logistik GmbH",
    "requester": "anna@mueller-logistik.de",
    "assignee": None,
    "reply": "support+4711-0123456789ab@support.example.com",
}


def digest(subject: str = SUBJECT) -> dict[str, Any]:
    """An agent_digest's lists as rendered: nothing of one's own, one ticket shown of 51."""
    waiting = {**_WAITING, "subject": subject}
    return {
        "day": "2026-12-07",
        "mine": {"tickets": [], "total": 0},
        "unassigned": {"tickets": [waiting], "total": 51},
        "overdue": {"tickets": [waiting], "total": 1},
    }


def make_context(
    kind: str = "ticket_created", language: str = "de", open_now: bool = True, **ticket: Any
) -> dict[str, Any]:
    """A full context as the caller builds it (see the contract in mailgate.render)."""
    return {
        "ticket": {
            "id": 4711,
            "subject": SUBJECT,
            "status": "open",
            "organization": "Müller Logistik GmbH",
            "requester": "anna@mueller-logistik.de",
            "requester_name": "Anna Müller",
            "priority": "normal",
            "routing_reason": "sender domain mueller-logistik.de",
            "emergency": False,
            "paged": False,
            "assignee": None,
            **ticket,
        },
        "tag": "[#4711]",
        "recipient": "anna@mueller-logistik.de",
        "support": {
            "address": "support@support.example.com",
            "hours": SupportHours(HoursConfig()).describe(language),
            "open_now": open_now,
            "secrets_url": None,
            "phone": None,
            "emergency_phone": None,
            "emergency_keywords": ["NOTFALL", "EMERGENCY", "DRINGEND", "URGENT"],
            "on_call": True,
        },
        "comment": (
            {
                "author": "anna@mueller-logistik.de",
                "author_name": "Anna Müller",
                "body": "Guten Tag,\n\nder Drucker zeigt Fehler 49.\n\nViele Grüße\nAnna Müller",
                "history": "",
                "attachments": [{"filename": "fehler.jpg", "size": 348_160}],
            }
            if kind in WITH_COMMENT
            else None
        ),
        "errors": (
            ["#status done: status must be open, pending or solved", "#frobnicate: unknown command"]
            if kind in ("command_error", "agent_unverified")
            else []
        ),
        "about": "",
        "moved": MOVED if kind == "ticket_moved" else None,
        "unused_prefix": None,
        "by": "lisa@support.example.com" if kind == "ticket_assigned" else "",
        "digest": digest(ticket.get("subject", SUBJECT)) if kind == "agent_digest" else None,
        "left_out": [],
    }


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


class _Balance(HTMLParser):
    """Checks that every element is closed in order; enough for our hand-written HTML."""

    VOID = {"meta", "br", "hr", "img", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.problems.append(f"unexpected </{tag}>")


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders(renderer: Renderer, kind: str, language: str) -> None:
    out = renderer.render(kind, language, make_context(kind, language))
    for part in (out.text, out.html):
        assert "4711" in part
        assert SUBJECT in part
        assert "[#4711]" in part
    assert out.text.endswith("\n")
    assert "<" not in out.text.replace("<anna@mueller-logistik.de>", "")  # no HTML in text
    checker = _Balance()
    checker.feed(out.html)
    checker.close()
    assert checker.doctype
    assert not checker.problems
    assert not checker.stack
    assert f'<html lang="{language}">' in out.html
    # no external resources: nothing a mail client would fetch
    for fetch in ("src=", "<link", "url(", "@import", "http://", "https://"):
        assert fetch not in out.html


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", sorted(SHOWS_COMMENT))
def test_comment_body_is_shown_with_line_breaks(
    renderer: Renderer, kind: str, language: str
) -> None:
    out = renderer.render(kind, language, make_context(kind, language))
    assert "der Drucker zeigt Fehler 49.\n\nViele Grüße\nAnna Müller" in out.text
    assert "der Drucker zeigt Fehler 49.<br>\n<br>\nViele Grüße<br>\nAnna Müller" in out.html


@pytest.mark.parametrize("language", LANGUAGES)
def test_command_error_lists_errors_and_commands(renderer: Renderer, language: str) -> None:
    out = renderer.render("command_error", language, make_context("command_error", language))
    lines = out.text.splitlines()
    assert "  #status done: status must be open, pending or solved" in lines
    assert "  #frobnicate: unknown command" in lines
    for command in ("#status open|pending|solved", "#org NAME", "#requester EMAIL", "#note"):
        assert command in out.text
        assert command in out.html
    assert "<li><code>#frobnicate: unknown command</code></li>" in out.html


UNUSED = {
    # why → (names, what the sentence must say in de, in en)
    "not_authorised": (
        ["Müller Logistik GmbH"],
        "wenden Sie sich an Müller Logistik GmbH, damit Ihre Agentur",
        "ask Müller Logistik GmbH to add your agency",
    ),
    "ambiguous": (
        ["Nordwind Reisen", "Nordwind Logistik"],
        "kann Nordwind Reisen oder Nordwind Logistik bedeuten",
        "could mean Nordwind Reisen or Nordwind Logistik",
    ),
    "unknown": ([], "ist keiner unserer Kunden", "is none of our customers"),
}


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("why", UNUSED)
def test_acknowledgement_says_why_the_subject_prefix_was_not_used(
    renderer: Renderer, language: str, why: str
) -> None:
    """One plain sentence, in the template's language, with the reason and what to do."""
    names, german, english = UNUSED[why]
    context = make_context("ticket_created", language, organization="Agentur Blau")
    context["unused_prefix"] = {"why": why, "prefix": "Nordwind <b>", "names": names}
    out = renderer.render("ticket_created", language, context)
    said = german if language == "de" else english
    assert said in " ".join(out.text.split())
    assert said in out.html
    assert "Agentur Blau" in out.text  # where the ticket went instead
    if why != "not_authorised":
        assert "Nordwind <b>" in out.text and "Nordwind &lt;b&gt;" in out.html
    without = make_context("ticket_created", language)
    plain = renderer.render("ticket_created", language, without)
    assert "Müller Logistik GmbH" in plain.text  # the organization, named
    assert german not in plain.text and english not in plain.text


@pytest.mark.parametrize("language", LANGUAGES)
def test_customer_reply_names_author_ticket_and_organization(
    renderer: Renderer, language: str
) -> None:
    out = renderer.render("customer_reply", language, make_context("customer_reply", language))
    for part in (out.text, out.html):
        assert "Anna Müller" in part
        assert "Müller Logistik GmbH" in part
    assert "Anna Müller <anna@mueller-logistik.de>" in out.text
    assert "Anna Müller &lt;anna@mueller-logistik.de&gt;" in out.html


@pytest.mark.parametrize(
    ("language", "word", "credentials"),
    [("de", "NOTFALL", "Passwörter"), ("en", "EMERGENCY", "passwords")],
)
def test_emergency_note_only_outside_hours(
    renderer: Renderer, language: str, word: str, credentials: str
) -> None:
    closed = renderer.render(
        "ticket_created", language, make_context(language=language, open_now=False)
    )
    opened = renderer.render(
        "ticket_created", language, make_context(language=language, open_now=True)
    )
    assert word in closed.text
    assert word in closed.html
    assert word not in opened.text
    assert word not in opened.html
    # the reminder about credentials and the hours are always there
    for part in (closed.text, closed.html, opened.text, opened.html):
        assert credentials in part
        assert "09:00–17:00" in part


@pytest.mark.parametrize(
    ("language", "paged", "word"), [("de", "alarmiert", "NOTFALL"), ("en", "alerted", "EMERGENCY")]
)
def test_an_emergency_acknowledgement_says_alerted_only_when_someone_was(
    renderer: Renderer, language: str, paged: str, word: str
) -> None:
    """A ticket tagged emergency by an admin's rule, or inheriting the tag, paged nobody."""
    for was in (True, False):
        context = make_context(language=language, open_now=False, emergency=True, paged=was)
        out = renderer.render("ticket_created", language, context)
        assert (paged in out.text) is was and (paged in out.html) is was
        assert word not in out.text  # no "write NOTFALL": it is one already


@pytest.mark.parametrize("language", LANGUAGES)
def test_no_keywords_no_promise(renderer: Renderer, language: str) -> None:
    """``emergency_keywords = []``: the acknowledgement asks for no keyword."""
    context = make_context(language=language, open_now=False)
    context["support"]["emergency_keywords"] = []
    out = renderer.render("ticket_created", language, context)
    assert "NOTFALL" not in out.text and "EMERGENCY" not in out.text


@pytest.mark.parametrize("kind", sorted(set(KINDS) - {"ticket_created", "emergency"}))
def test_no_emergency_note_elsewhere(renderer: Renderer, kind: str) -> None:
    for language in LANGUAGES:
        out = renderer.render(kind, language, make_context(kind, language, open_now=False))
        assert "NOTFALL" not in out.text
        assert "EMERGENCY" not in out.text


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_html_escapes_values_and_text_keeps_them(
    renderer: Renderer, kind: str, language: str
) -> None:
    subject = "<script>alert(1)</script> Müller & Söhne"
    context = make_context(kind, language, subject=subject)
    if kind in SHOWS_COMMENT:
        context["comment"]["body"] = "Bitte <b>sofort</b>:\nA & B <script>x()</script>"
    out = renderer.render(kind, language, context)
    assert "<script>" not in out.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Müller &amp; Söhne" in out.html
    assert subject in out.text
    if kind in SHOWS_COMMENT:
        assert "Bitte &lt;b&gt;sofort&lt;/b&gt;:<br>\nA &amp; B &lt;script&gt;" in out.html
        assert "Bitte <b>sofort</b>:\nA & B <script>x()</script>" in out.text


@pytest.mark.parametrize("key", CONTEXT_KEYS)
def test_missing_context_key_raises(renderer: Renderer, key: str) -> None:
    context = make_context("ticket_closed")
    del context[key]
    with pytest.raises(UndefinedError):
        renderer.render("ticket_closed", "de", context)


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("ticket_created", ("ticket", "requester_name")),
        ("ticket_created", ("support", "open_now")),
        ("customer_reply", ("ticket", "organization")),
        ("agent_reply", ("comment", "body")),
        ("new_ticket_follower", ("comment", "author_name")),
    ],
)
def test_missing_nested_value_raises(renderer: Renderer, kind: str, path: tuple[str, str]) -> None:
    """Never render empty: "Guten Tag ," or a blank comment must not reach a customer."""
    context = copy.deepcopy(make_context(kind))
    del context[path[0]][path[1]]
    with pytest.raises(UndefinedError):
        renderer.render(kind, "de", context)


def test_comment_is_none_where_not_used(renderer: Renderer) -> None:
    for kind in ("ticket_closed", "command_error"):
        out = renderer.render(kind, "en", make_context(kind, "en"))
        assert "None" not in out.text


def test_unknown_kind_raises(renderer: Renderer) -> None:
    with pytest.raises(ValueError, match="unknown notification kind"):
        renderer.render("password_reset", "de", make_context())
    with pytest.raises(ValueError):
        renderer.render("../de/ticket_created", "de", make_context())


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("fr", "de"),
        ("", "de"),
        ("../../etc", "de"),
        ("DE", "de"),
        ("en-GB", "en"),
        ("en_US", "en"),
    ],
)
def test_language_fallback(renderer: Renderer, language: str, expected: str) -> None:
    context = make_context("ticket_closed")
    out = renderer.render("ticket_closed", language, context)
    assert out == renderer.render("ticket_closed", expected, context)


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_admin_override_wins_for_that_file_only(tmp_path: Path, renderer: Renderer) -> None:
    write(tmp_path, "de/ticket_closed.txt", "Erledigt: {{ tag }} {{ ticket.subject }}\n")
    admin = Renderer(str(tmp_path))
    context = make_context("ticket_closed")
    out = admin.render("ticket_closed", "de", context)
    builtin = renderer.render("ticket_closed", "de", context)
    assert out.text == f"Erledigt: [#4711] {SUBJECT}\n"
    assert out.html == builtin.html  # the HTML part still comes from the built-ins
    for kind in KINDS:  # and every other kind and language too
        for language in LANGUAGES:
            if (kind, language) == ("ticket_closed", "de"):
                continue
            ctx = make_context(kind, language)
            assert admin.render(kind, language, ctx) == renderer.render(kind, language, ctx)


def test_admin_override_of_a_shared_part_reaches_builtin_templates(tmp_path: Path) -> None:
    """Includes and bases are looked up through the same loader: the admin's come first."""
    write(tmp_path, "de/_footer.txt", "-- \nMüller IT-Service · Hotline 030 123456\n")
    admin = Renderer(str(tmp_path))
    for kind in KINDS:
        out = admin.render(kind, "de", make_context(kind))
        assert out.text.endswith("-- \nMüller IT-Service · Hotline 030 123456\n")
        assert "Hotline" not in out.html


def test_admin_template_is_strict_and_autoescaped(tmp_path: Path) -> None:
    write(tmp_path, "en/agent_reply.txt", "{{ comment.body }} {{ ticket.owner }}\n")
    write(tmp_path, "en/agent_reply.html", "<p>{{ comment.body }}</p>\n")
    admin = Renderer(str(tmp_path))
    context = make_context("agent_reply", "en")
    with pytest.raises(UndefinedError):
        admin.render("agent_reply", "en", context)
    write(tmp_path, "en/agent_reply.txt", "{{ comment.body }}\n")
    context["comment"]["body"] = "a <b> & c"
    out = Renderer(str(tmp_path)).render("agent_reply", "en", context)
    assert out.text == "a <b> & c\n"
    assert out.html == "<p>a &lt;b&gt; &amp; c</p>\n"


def test_admin_language_needs_both_parts(tmp_path: Path, renderer: Renderer) -> None:
    """An extra language is used only when both parts exist: a mail never mixes languages."""
    write(tmp_path, "fr/ticket_closed.txt", "Demande {{ tag }} fermée.\n")
    admin = Renderer(str(tmp_path))
    context = make_context("ticket_closed")
    assert admin.render("ticket_closed", "fr", context) == renderer.render(
        "ticket_closed", "de", context
    )
    write(tmp_path, "fr/ticket_closed.html", "<p>Demande {{ tag }} fermée.</p>\n")
    out = Renderer(str(tmp_path)).render("ticket_closed", "fr", context)
    assert out.text == "Demande [#4711] fermée.\n"
    assert out.html == "<p>Demande [#4711] fermée.</p>\n"


def test_missing_templates_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="templates_dir"):
        Renderer(str(tmp_path / "nope"))


def test_builtin_templates_are_complete() -> None:
    root = builtin_templates_dir()
    for language in LANGUAGES:
        for kind in KINDS:
            for suffix in ("txt", "html"):
                assert (root / language / f"{kind}.{suffix}").is_file()
