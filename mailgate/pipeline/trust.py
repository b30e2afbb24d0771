"""Who really wrote a mail: the authentication verdicts mailgate may believe.

A From header is forgeable, so an agent's address in it proves nothing. A mail counts as
an agent's only when it is authenticated for the From domain by one of
``[security] agent_auth``:

- ``authentication-results``: our own MTA's verdict (RFC 8601), read from an
  ``Authentication-Results`` header that carries exactly ``[security] authserv_id`` and
  stands above every ``Received:`` header of a host we do not trust. The MTA must strip
  forged copies of its own header (RFC 8601 §5); counting only headers above the first
  foreign relay is defence in depth, since anything below it was written before our MTA
  saw the mail. ``dmarc=pass`` with ``header.from`` = the From domain counts, and so does
  ``dkim=pass`` whose ``header.d`` is aligned with it;
- ``dkim``: mailgate's own DKIM check of the mail (RFC 6376), aligned the same way;
- ``from-header``: the From header alone, for closed networks (a warning names the risk).

The same trusted headers say when a customer's domain failed DMARC: such a sender is a
stranger (no threading by tag or References, no membership). Everything here is pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import authres
from publicsuffixlist import PublicSuffixList

from mailgate.config import Config
from mailgate.dkim_check import DkimResult
from mailgate.pipeline.reading import Mail
from mailgate.routing import domain_of

AUTH_RESULTS = "authentication-results"
_BY_HOST = re.compile(r"\bby\s+([^\s;()]+)", re.IGNORECASE)
_MAX_HEADERS = 20  # Authentication-Results headers read per mail; more is a flood


@dataclass(frozen=True, slots=True)
class Authentication:
    """What mailgate believes about a mail's From domain.

    ``verdict`` is the result that authenticated it (as ``tickets show`` prints it), or
    None; ``dmarc_fail`` the trusted verdict that its DMARC failed, or None; ``tried``
    says, for an agent's mail that was not authenticated, what each method found.
    """

    verdict: str | None = None
    dmarc_fail: str | None = None
    tried: tuple[str, ...] = ()


NOT_AUTHENTICATED = Authentication()


@lru_cache(maxsize=1)
def _suffixes() -> Any:
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """The registered domain under its public suffix (RFC 7489 §3.2): example.co.uk for
    mail.example.co.uk; the domain itself when it is a public suffix or unknown."""
    found = _suffixes().privatesuffix(domain.lower().rstrip("."))
    return str(found) if found else domain.lower()


def aligned(signer: str, from_domain: str) -> bool:
    """A signing domain speaks for the From domain when it is that domain or its
    organizational domain (a parent that is a public suffix never is)."""
    signer, from_domain = signer.lower().rstrip("."), from_domain.lower().rstrip(".")
    return signer == from_domain or signer == organizational_domain(from_domain) != from_domain


def trusted_results(
    headers: Iterable[tuple[str, str]], authserv_id: str, trusted_hosts: frozenset[str]
) -> Iterator[Any]:
    """The results of our MTA's Authentication-Results headers, top to bottom, that stand
    above the first ``Received:`` header written by a host outside ``trusted_hosts``."""
    seen = 0
    for name, value in headers:
        key = name.lower()
        if key == "received":
            match = _BY_HOST.search(value)
            if match is None or match.group(1).lower().rstrip(".") not in trusted_hosts:
                return
        elif key == AUTH_RESULTS:
            seen += 1
            if seen > _MAX_HEADERS:
                return
            if authserv_id not in value.lower():
                continue  # cheap test first: another server's header
            parsed = _parse(value)
            if parsed is not None and str(parsed.authserv_id).lower() == authserv_id:
                yield from parsed.results


def _parse(value: str) -> Any:
    try:
        return authres.AuthenticationResultsHeader.parse_value(" ".join(value.split()))
    except Exception:  # authres raises its own errors and others on malformed input
        return None


def _prop(result: Any, ptype: str, name: str) -> str | None:
    for prop in getattr(result, "properties", None) or ():
        if str(prop.type).lower() == ptype and str(prop.name).lower() == name:
            return str(prop.value).lower().strip('"')
    return None


def from_mta(results: Iterable[Any], from_domain: str) -> tuple[str | None, str | None]:
    """(pass verdict, DMARC failure) for the From domain in our MTA's results."""
    passed: str | None = None
    failed: str | None = None
    for result in results:
        method, outcome = str(result.method).lower(), str(result.result).lower()
        if method == "dmarc":
            header_from = _prop(result, "header", "from")
            if header_from is None or header_from.rstrip(".") != from_domain:
                continue
            if outcome == "pass":
                passed = passed or f"dmarc=pass header.from={header_from}"
            elif outcome == "fail":
                failed = failed or f"dmarc=fail header.from={header_from}"
        elif method == "dkim" and outcome == "pass":
            signer = _prop(result, "header", "d")
            if signer is not None and aligned(signer, from_domain):
                passed = passed or f"dkim=pass header.d={signer}"
    return passed, failed


def by_dkim(result: DkimResult | None, from_domain: str) -> str | None:
    """mailgate's own DKIM check, when it passed for an aligned domain."""
    if result is None or result.status != "pass" or result.domain is None:
        return None
    if not aligned(result.domain, from_domain):
        return None
    return f"dkim=pass d={result.domain} (checked by mailgate)"


def authentication(mail: Mail, config: Config) -> Authentication:
    """What authenticates the mail's sender (:func:`authenticate`), an agent or not."""
    agent = mail.sender in config.agents.addresses
    return authenticate(mail.message.headers, mail.sender, mail.dkim, config, agent)


def authenticate(
    headers: tuple[tuple[str, str], ...],
    sender: str,
    dkim: DkimResult | None,
    config: Config,
    agent: bool,
) -> Authentication:
    """What authenticates ``sender``'s domain, by the methods of ``[security] agent_auth``.

    ``agent`` says whether the sender is an agent address: only then does ``from-header``
    count, and only then is ``tried`` worth filling (it explains a refusal to the agent).
    """
    security = config.security
    methods = security.agent_auth
    from_domain = domain_of(sender).rstrip(".")
    verdict: str | None = None
    dmarc_fail: str | None = None
    tried: list[str] = []
    if security.authserv_id is not None and sender:
        results = trusted_results(headers, security.authserv_id, security.believed_hosts)
        mta_pass, dmarc_fail = from_mta(results, from_domain)
        if "authentication-results" in methods:
            verdict = mta_pass
            if agent and mta_pass is None:
                tried.append(
                    f"authentication-results: no pass for {from_domain} from "
                    f"{security.authserv_id}" + (f" ({dmarc_fail})" if dmarc_fail else "")
                )
    elif agent and "authentication-results" in methods:
        tried.append("authentication-results: inactive, [security] authserv_id is not set")
    if dmarc_fail is not None:
        return Authentication(None, dmarc_fail, tuple(tried))
    if verdict is None and "dkim" in methods:
        verdict = by_dkim(dkim, from_domain)
        if agent and verdict is None:
            tried.append(f"dkim: {dkim or 'not checked'}, no aligned signature of {from_domain}")
    if verdict is None and agent and "from-header" in methods:
        verdict = "from-header (trusted by [security] agent_auth)"
    return Authentication(verdict, None, tuple(tried) if verdict is None else ())
