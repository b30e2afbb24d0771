"""Notification texts from jinja2 templates: one plain-text and one HTML part per mail.

Admins adapt the wording without touching code by pointing ``[outbound].templates_dir`` at
a folder with files of the same names; whatever they do not override still comes from the
built-in templates. Pure apart from reading the template files: the caller builds the
context and sends the result.

The context contract (every template may rely on exactly these names):

``ticket``     mapping: id, subject, status, organization (str or None), requester,
               requester_name, priority, routing_reason, assignee (the agent who handles
               it, or None), emergency (bool: tagged ``emergency``), paged (bool: this
               acknowledgement's emergency paged the on-call team); None for a
               notification that
               belongs to no ticket (agent_unverified for a quarantined mail)
``tag``        the ticket's subject tag, e.g. ``"[#12]"``
``recipient``  the address this copy goes to
``support``    mapping: address, hours (:meth:`SupportHours.describe`), open_now (bool),
               secrets_url, phone (the number that applies at the row's time: ``[support]
               phone`` in hours, ``emergency_phone`` outside; None when unset),
               emergency_phone, emergency_keywords (list; empty: no emergencies), on_call
               (bool: an emergency outside hours pages someone)
``comment``    mapping: author, author_name, body, attachments (list of mappings:
               filename, size in bytes), history (for agent_new_ticket and emergency the quoted or
               forwarded text below the new text, which ``body`` then holds alone; else
               ""), secrets (list of mappings: number, url, expires — the one-time links to
               the ``[secret N]`` of the body, in an agent's own mail with ``[secrets]
               vault`` only; else empty or absent) — for ticket_created, new_ticket_follower,
               agent_reply, customer_reply, agent_new_ticket, emergency, and for
               ticket_moved the ticket's first public comment, for ticket_assigned the
               customer's latest (None when it has none); None otherwise
``errors``     list of str — the refused commands for command_error, what each
               authentication method found for agent_unverified; else empty
``about``      the subject of the mail a notification without ticket is about, else ""
``moved``      mapping: from (str or None), to — the move a ticket_moved tells of; else None
``by``         who gave the ticket to the recipient, for ticket_assigned; else ""
``digest``     mapping for agent_digest: day (ISO date), mine, unassigned, overdue (each a
               mapping: tickets, a list of mappings id, subject, status, priority, since,
               organization, requester, assignee, reply (its reply address); total, how
               many match); else None
``unused_prefix`` mapping: why (``unknown``, ``ambiguous``, ``not_authorised``), prefix (as
               written), names (the organizations it may mean) — for a ticket_created whose
               subject named a customer that did not decide the organization; else None
``left_out``   list of mappings: filename, size in bytes — an agent_reply's files that were
               not attached, being above ``[outbound] max_attachment_size`` (the ticket
               keeps them); else empty
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    UndefinedError,
    select_autoescape,
)
from markupsafe import Markup, escape

import mailgate
from mailgate.errors import ConfigError
from mailgate.models import NotificationKind
from mailgate.newlines import as_lf

KINDS: tuple[str, ...] = tuple(NotificationKind)
LANGUAGES: tuple[str, ...] = ("de", "en")
# Tried in this order after the requested language: German first, as mailgate's teams are.
FALLBACK_LANGUAGES: tuple[str, ...] = ("de", "en")
CONTEXT_KEYS: tuple[str, ...] = (
    "ticket",
    "tag",
    "recipient",
    "support",
    "comment",
    "errors",
    "about",
    "moved",
    "unused_prefix",
    "by",
    "digest",
    "left_out",
)

# A language is a folder name; anything else (a path, "..") must never reach the loader.
_LANGUAGE = re.compile(r"^[a-z]{2,3}$")


@dataclass(frozen=True)
class Rendered:
    """Both parts of one notification, for a multipart/alternative mail."""

    text: str
    html: str


def builtin_templates_dir() -> Path:
    """The folder with the built-in templates, wherever mailgate was installed from.

    A wheel carries them inside the package (``mailgate/templates``, see pyproject's
    force-include); an editable install or a checkout has them at the repository's top.
    """
    packaged = Path(mailgate.__file__).resolve().parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "templates"


def nl2br(value: Any) -> Markup:
    """Escape a plain-text body and keep its line breaks as ``<br>``.

    ``<br>`` rather than ``white-space: pre-wrap`` because Outlook's Word-based renderer
    ignores that style and would run a customer's lines together.
    """
    text = as_lf(str(value))
    return escape(text).replace("\n", Markup("<br>\n"))


def filesize(value: Any) -> str:
    """A size in bytes as people read it in a mail client's attachment list."""
    size = int(value)
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{round(size / 1024)} KB"
    return f"{size / (1024 * 1024):.1f} MB"


class Renderer:
    """Renders notification kinds; build one and keep it (the environment caches templates)."""

    def __init__(self, templates_dir: str | None = None) -> None:
        loaders: list[BaseLoader] = []
        if templates_dir is not None:
            # A typo in the path would otherwise silently fall back to the built-ins.
            if not Path(templates_dir).is_dir():
                raise ConfigError(f"[outbound].templates_dir: {templates_dir!r} is not a folder")
            loaders.append(FileSystemLoader(templates_dir))
        loaders.append(FileSystemLoader(builtin_templates_dir()))
        self.env = Environment(
            loader=ChoiceLoader(loaders),
            # Missing data must fail loudly, never send "Ticket  wurde angelegt".
            undefined=StrictUndefined,
            autoescape=select_autoescape(["html"]),
            keep_trailing_newline=True,
            # Block tags on lines of their own leave no blank lines behind in the text part.
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["nl2br"] = nl2br
        self.env.filters["filesize"] = filesize

    def render(self, kind: str, language: str, context: Mapping[str, Any]) -> Rendered:
        """Render ``<language>/<kind>.txt`` and ``.html``, falling back to German, English.

        Raises ``ValueError`` for an unknown kind and jinja2's ``UndefinedError`` when the
        context lacks a name of the contract or a template uses one that is missing.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown notification kind {kind!r}; known are {', '.join(KINDS)}")
        missing = [key for key in CONTEXT_KEYS if key not in context]
        if missing:
            # Checked here too: a template that happens not to use a name would hide the
            # caller's bug until an admin's template does use it.
            raise UndefinedError(f"context for {kind!r} lacks {', '.join(map(repr, missing))}")
        text, html = self._templates(kind, language)
        return Rendered(text=text.render(context), html=html.render(context))

    def _templates(self, kind: str, language: str) -> tuple[Template, Template]:
        """The first language, in fallback order, that has both parts of ``kind``.

        Both parts come from the same language so a mail never mixes German and English.
        """
        wanted = language.strip().lower().replace("_", "-").split("-")[0]
        for lang in dict.fromkeys((wanted, *FALLBACK_LANGUAGES)):
            if not _LANGUAGE.match(lang):
                continue
            try:
                return (
                    self.env.get_template(f"{lang}/{kind}.txt"),
                    self.env.get_template(f"{lang}/{kind}.html"),
                )
            except TemplateNotFound as exc:
                if exc.name not in (f"{lang}/{kind}.txt", f"{lang}/{kind}.html"):
                    raise  # a broken include or base inside a template that does exist
        raise TemplateNotFound(f"{kind}.txt/.html in any of {', '.join(FALLBACK_LANGUAGES)}")
