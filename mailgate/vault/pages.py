"""``/secret/<token>``: the page behind an agent's one-time link.

``GET`` only looks (a mail client's link scanner may fetch it): it shows a button. The
button's ``POST`` carries the page's token (an HMAC of the link's token, so another site
cannot make a browser reveal a link it learnt) and reveals the value once, then it is gone;
any later visit says the link was used. Failed look-ups (unknown links, wrong page tokens)
are counted per client address, and past :data:`FAILURES` a minute answered 429 without
looking. The pages are the ``secret_page.html`` templates, German or English as the
browser asks, with no external asset.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from aiohttp import web

from mailgate.config import Config
from mailgate.errors import StoreUnavailable
from mailgate.render import Renderer
from mailgate.store import Store
from mailgate.vault.crypto import Unreadable, page_token, same
from mailgate.vault.store import LinkState, look_up, reveal, vault_key
from mailgate.web import csp, new_nonce

log = logging.getLogger(__name__)

T = TypeVar("T")

FAILURES = 10  # failed look-ups a client address may make per WINDOW
WINDOW = timedelta(minutes=1)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,100}")
_STATUS = {
    "ready": 200,
    "revealed": 200,
    "used": 410,
    "expired": 410,
    "unknown": 404,
    "forbidden": 403,
    "limited": 429,
    "unreadable": 500,
    "unavailable": 503,
}


class RateLimit:
    """Failed look-ups per client address in a sliding window, on the daemon's clock."""

    def __init__(self, limit: int = FAILURES, window: timedelta = WINDOW) -> None:
        self.limit, self.window = limit, window
        self.failures: dict[str, deque[datetime]] = {}

    def _recent(self, client: str, now: datetime) -> deque[datetime]:
        times = self.failures.get(client, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def blocked(self, client: str, now: datetime) -> bool:
        return len(self._recent(client, now)) >= self.limit

    def failed(self, client: str, now: datetime) -> None:
        if len(self.failures) > 10_000:  # a flood of addresses: forget the quiet ones
            for address in [a for a, t in self.failures.items() if not self._recent(a, now)]:
                del self.failures[address]
        times = self._recent(client, now)
        times.append(now)
        self.failures[client] = times


class SecretPages:
    """The reveal pages, reading the config in force (a reload changes it) at each request."""

    def __init__(
        self, config: Callable[[], Config], store: Store, clock: Callable[[], datetime]
    ) -> None:
        self.config, self.store, self.clock = config, store, clock
        self.limit = RateLimit()
        self._renderer: tuple[str | None, Renderer] | None = None

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/secret/{token}", self.show)
        app.router.add_post("/secret/{token}", self.reveal)

    async def show(self, request: web.Request) -> web.Response:
        """The link's state; a button when it can still be revealed. Changes nothing."""
        token, client, now = request.match_info["token"], _client(request), self.clock()
        if self.limit.blocked(client, now):
            return self._page(request, LinkState("limited"))
        if not self.config().secrets.vault or not _TOKEN.fullmatch(token):
            state = LinkState("unknown")
        else:
            try:
                state = await self._db(self._look_up, token, now)
            except StoreUnavailable:
                return self._page(request, LinkState("unavailable"))
        if state.state == "unknown":
            self.limit.failed(client, now)
        form = page_token(vault_key(self.config()), token) if state.state == "ready" else ""
        return self._page(request, state, form)

    async def reveal(self, request: web.Request) -> web.Response:
        """The button: check the page token, reveal once, note it on the ticket."""
        token, client, now = request.match_info["token"], _client(request), self.clock()
        if self.limit.blocked(client, now):
            return self._page(request, LinkState("limited"))
        form = await request.post()
        given = form.get("page_token")
        config = self.config()
        if (
            not config.secrets.vault
            or not _TOKEN.fullmatch(token)
            or not isinstance(given, str)
            or not same(given, page_token(vault_key(config), token))
        ):
            self.limit.failed(client, now)
            return self._page(request, LinkState("forbidden"))
        try:
            state = await self._db(self._reveal, config, token, now)
        except Unreadable as exc:
            log.error("secret link: %s", exc)
            return self._page(request, LinkState("unreadable"))
        except StoreUnavailable:
            return self._page(request, LinkState("unavailable"))
        if state.state == "unknown":
            self.limit.failed(client, now)
        elif state.state == "revealed":
            log.info("secret %d of ticket %d revealed", state.number, state.ticket_id)
        return self._page(request, state)

    def _look_up(self, token: str, now: datetime) -> LinkState:
        # A short ORM session (it writes nothing): a link is looked at now and then.
        with self.store.transaction() as session:
            return look_up(session, token, now)

    def _reveal(self, config: Config, token: str, now: datetime) -> LinkState:
        with self.store.transaction() as session:
            return reveal(session, config, token, now)

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args))

    def renderer(self, config: Config) -> Renderer:
        folder = config.outbound.templates_dir
        if self._renderer is None or self._renderer[0] != folder:
            self._renderer = (folder, Renderer(folder))
        return self._renderer[1]

    def _page(self, request: web.Request, state: LinkState, form: str = "") -> web.Response:
        config = self.config()
        language = _language(request.headers.get("Accept-Language", ""), config.mail.language)
        template = self.renderer(config).env.get_template(f"{language}/secret_page.html")
        nonce = new_nonce()
        html = template.render(
            state=state.state,
            number=state.number,
            tag=config.tickets.tag_for(state.ticket_id) if state.ticket_id else "",
            revealed_at=(
                state.revealed_at.strftime("%Y-%m-%d %H:%M UTC") if state.revealed_at else ""
            ),
            value=state.value or "",
            page_token=form,
            nonce=nonce,
        )
        response = web.Response(
            status=_STATUS[state.state], text=html, content_type="text/html", charset="utf-8"
        )
        response.headers["Content-Security-Policy"] = csp(nonce)
        response.headers["Content-Language"] = language
        return response


def _client(request: web.Request) -> str:
    return request.remote or "?"


def _language(header: str, default: str) -> str:
    """The first of de/en the browser asks for, else the config's language."""
    for part in header.split(","):
        tag = part.split(";")[0].strip().lower()[:2]
        if tag in ("de", "en"):
            return tag
    return default
