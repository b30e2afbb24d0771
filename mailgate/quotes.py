"""Reply bodies → only the new text; forwarded bodies → the original sender.

A ticket comment must show what the customer wrote *this time*. Mail clients append the whole
history below (or around) it: Outlook header blocks, "Am … schrieb …:" attributions, ``>``
quotes, signatures and "Sent from my iPhone" footers. The raw mail keeps everything, so
removing too little only clutters a comment, while removing too much loses a customer's words
for good in the agent's view. Every rule here is therefore biased towards keeping text:

* a cut needs strong evidence (a separator line, an Outlook header block with a sender and
  at least a date or two more fields, an attribution with a date, address or a quote below);
* ``>`` quotes are only removed when nothing new follows them: inline / bottom posting
  (answers between quotes) is kept whole, only the trailing quote and signature go;
* when stripping would leave nothing (a bare forward, a quote-only mail), the whole text is
  returned instead of an empty comment.

Both functions are pure and never raise for odd input. The rules were measured against the
shared real-world corpus (``bench/quotes_eval.py``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from mailgate.newlines import as_lf

__all__ = ["forwarded_original", "split_history", "strip_quoted"]

# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------

# Zero-width and bidi marks: Windows Mail and Outlook sprinkle them into header lines
# ("Gesendet: ‎Dienstag‎"), and they would defeat every pattern below.
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")

_EMAIL = r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+"
_EMAIL_RE = re.compile(_EMAIL)
# Something that reads as a date or time: 10:15, 12.03.2024, 2024-03-12, 3/12/24, a year,
# "12. März", Chinese "2016年".
_DATE_RE = re.compile(
    r"\d{1,2}[:.]\d{2}\b|\b\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b|\b(?:19|20)\d{2}\b"
    r"|\b\d{1,2}\.\s+\w|\d{4}年"
)
# A date strong enough to mark an attribution without an address: a time, a year or a full
# numeric date. "Am 12.03. habe ich geschrieben:" is the customer talking, not a client.
_STRONG_DATE_RE = re.compile(
    r"\d{1,2}:\d{2}|\b(?:19|20)\d{2}\b|\b\d{1,2}[./-]\d{1,2}[./-]\d{2,4}\b"
)

# Lines that open quoted or forwarded history on their own ("-----Original Message-----").
_SEPARATOR_PHRASES = (
    "original message",
    "original e-mail",
    "original email",
    "ursprüngliche nachricht",
    "ursprüngliche mail",
    "original-nachricht",
    "originalnachricht",
    "forwarded message",
    "forwarded e-mail",
    "weitergeleitete nachricht",
    "message d'origine",
    "message d’origine",
    "message original",
    "message transféré",
    "mensaje original",
    "mensaje reenviado",
    "messaggio originale",
    "messaggio inoltrato",
    "oorspronkelijk bericht",
    "origineel bericht",
    "doorgestuurd bericht",
    "oprindelig besked",
    "oprindelig meddelelse",
    "videresendt besked",
    "videresendt meddelelse",
    "opprinnelig melding",
    "videresendt melding",
    "ursprungligt meddelande",
    "vidarebefordrat meddelande",
    "alkuperäinen viesti",
    "välitetty viesti",
    "oryginalna wiadomość",
    "wiadomość oryginalna",
    "przekazana wiadomość",
    "mensagem original",
    "mensagem encaminhada",
    "původní zpráva",
    "přeposlaná zpráva",
    "исходное сообщение",
    "пересылаемое сообщение",
    "пересланное сообщение",
    "eredeti üzenet",
    "továbbított üzenet",
)
# Apple Mail and friends introduce a forward with a sentence instead of dashes.
_FORWARD_INTROS = (
    "begin forwarded message",
    "anfang der weitergeleiteten nachricht",
    "début du message réexpédié",
    "début du message transféré",
    "inicio del mensaje reenviado",
    "comienzo del mensaje reenviado",
    "inizio messaggio inoltrato",
    "begin doorgestuurd bericht",
    "início da mensagem reencaminhada",
    "início da mensagem encaminhada",
)


def _alternation(words: Sequence[str]) -> str:
    """Regex alternation, longest first, so "envoyé le" wins over "envoyé"."""
    return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))


_SEPARATOR_RE = re.compile(
    r"^[\s*_=~-]*?(?P<lead>[-_=*~]{2,})?[\s*_=~]*(?P<phrase>"
    + _alternation(_SEPARATOR_PHRASES + _FORWARD_INTROS)
    + r")[\s*_=~-]*[:：]?[\s*_=~-]*$",
    re.IGNORECASE,
)

# Header field names of inline header blocks (Outlook, Thunderbird, webmailers) by meaning.
_FIELDS = {
    "from": "from|von|de|van|da|fra|från|od|lähettäjä|от|від|kimden|feladó|absender|expéditeur"
    "|remitente|mittente|afzender|nadawca|odesílatel",
    "date": "sent|sent at|date|gesendet|datum|envoyé|envoyé le|enviado|enviado el|enviada"
    "|enviada em|inviato|inviato il|verzonden|verstuurd|skickat|sendt|lähetetty|päivämäärä"
    "|wysłano|wysłane|data|fecha|dato|отправлено|дата|надіслано|gönderildi|tarih|elküldve"
    "|dátum|odesláno|message du",
    "to": "to|an|à|a|aan|para|till|til|vastaanottaja|do|кому|kime|címzett|komu|destinataire"
    "|empfänger",
    "cc": "cc|bcc|kopie|copie|copie à|kopio|копия|dw|kopia",
    "subject": "subject|betreff|objet|sujet|asunto|oggetto|onderwerp|ämne|emne|aihe|temat|тема"
    "|konu|tárgy|předmět|assunto",
    "reply-to": "reply-to|reply to|antwort an|risposta|rispondi a|répondre à|responder a|svar till",
}
_FIELD_KIND = {name: kind for kind, names in _FIELDS.items() for name in names.split("|")}
_FIELD_RE = re.compile(
    r"^\s*[*_]{0,2}\s*(?P<name>"
    + _alternation(list(_FIELD_KIND))
    + r")\s*[*_]{0,2}\s*[:：]\s*[*_]{0,2}(?P<value>.*)$",
    re.IGNORECASE,
)

# Attribution verbs ("… wrote:", "… schrieb …:", "… a écrit :") in the languages we see.
_VERBS = (
    r"(?:wrote|writes|schrieb|geschrieben|a écrit|a ecrit|écrit|escribió|escribio"
    r"|ha scritto|scrisse|schreef|geschreven|skrev|kirjoitti|napisał\(a\)|napisała|napisał"
    r"|napisal|escreveu|написал\(а\)|написала|написал|пишет|пише|написав|írta|yazdı"
    r"|napsal\(a\)|napsal|έγραψε|כתב|כתבה|كتب)"
)
_CJK_VERBS = r"(?:写道|寫道|が書きました|님이 작성)"
# 1. "… <verb>:" at the end (English, French, Spanish, Italian, Dutch Apple, Polish, …).
_ATTR_VERB_END = re.compile(rf"(?:\b{_VERBS}|{_CJK_VERBS})\s*[:：]\s*$", re.IGNORECASE)
# 2. "On … wrote" without the colon (some Gmail and Zoho variants).
_ATTR_ON_WROTE = re.compile(r"^(?:on|at)\b.*\bwrote\s*$", re.IGNORECASE)
# 3. The verb in the middle: "Am … schrieb Anna <a@b.de>:", "Anna <a@b.de> schrieb am …:".
_ATTR_VERB_MID = re.compile(rf"\b{_VERBS}\b.{{0,160}}[:：]\s*$", re.IGNORECASE)
# 4. Date, address and a colon, no verb at all (Russian Gmail, Yandex, old Gmail):
#    "2016-10-24 15:36 GMT+02:00 Foo <info@foo.bar>:", "ср, 30 апр. 2025 г. в 15:19, X <x@y>:".
_ATTR_ADDRESS_END = re.compile(r"@[\w.-]+\s*[>)\]]?\s*[>)\]]?\s*[:：]\s*$")
# 5. Old Gmail's date-first line without a colon: "2013/7/20 sam <info@x.org>",
#    "2016-03-03 17:21 GMT+01:00 Some One".
_ATTR_GMAIL_DATE = re.compile(
    rf"^\d{{4}}[-/]\d{{1,2}}[-/]\d{{1,2}}\s+(?:\d{{1,2}}:\d{{2}}\s+GMT[+-]\d{{1,2}}:?\d{{2}}\s+\S"
    rf"|.*<{_EMAIL}>\s*$)"
)
# Words an attribution starts with ("On …", "Am …", "Le …", "W dniu …").
_ATTR_START = re.compile(
    r"^(?:on|at|am|le|el|il|in data|il giorno|op|em|den|på|w dniu|dnia|dne|dňa)\b",
    re.IGNORECASE,
)
# The tail of a wrapped attribution that Outlook's plain text puts behind ">": "> wrote:".
_QUOTED_VERB_TAIL = re.compile(
    rf"^>\s*(?:(?:{_VERBS}|{_CJK_VERBS})\s*[:：]?|[:：])\s*$", re.IGNORECASE
)
# A line holding only the end of an attribution: "wrote:", "het volgende geschreven:".
_TAIL_VERB = re.compile(
    rf"^(?:het\s+)?(?:volgende\s+)?(?:{_VERBS}|{_CJK_VERBS})\s*[:：]?\s*$", re.IGNORECASE
)

# Mobile and webmail footers. A footer line must be the whole line, so prose such as
# "The notification was sent from my iPhone app" never matches.
# Apps and devices that name themselves in footers. Generic words ("mail", "mobile") only
# count after "my" ("Sent from my phone"): "Gesendet per Mail am Montag" is a sentence.
_DEVICES = (
    r"iphone|ipad|ipod|android|blackberry|samsung|galaxy|huawei|xiaomi|pixel|nokia|htc"
    r"|motorola|outlook|yahoo|aol|gmail|gmx|web\.de|t-online|telekom|mailbox|airmail|spark"
    r"|typeapp|bluemail|proton\s?mail|icloud|windows|thunderbird|k-9|fairemail|sparrow"
)
_SENT = r"sent|gesendet|envoyé|enviado|inviato|verzonden|verstuurd|sendt|skickat|wysłane"
_FOOTER_RES = (
    # "Sent from my <anything short>": the classic, any device name.
    re.compile(
        r"^(?:sent from my|envoyé de mon|envoyé depuis mon|enviado desde mi|enviado do meu"
        r"|inviato dal mio|verzonden (?:vanaf|met|via) mijn|verstuurd (?:vanaf|met) mijn"
        r"|sendt fra min|skickat från min|wysłane z mojego|von meinem|gesendet von meinem"
        r"|gesendet von meiner|gesendet mit meinem)\s[^,;:!?]{1,40}$",
        re.IGNORECASE,
    ),
    # "<Sent> <from/with/via> … <known app or device> [a few words]".
    re.compile(
        rf"^(?:{_SENT})\s+(?:from|with|via|using|von|mit|über|depuis|de|à partir de|desde"
        rf"|con|do|da|dal|vanaf|met|fra|från|z)\s+[^,;:!?]{{0,25}}?\b(?:{_DEVICES})\b"
        r"(?:\s+[\w.&'’-]+){0,4}\s*$",
        re.IGNORECASE,
    ),
    re.compile(
        rf"^(?:{_SENT})\s+(?:from|via|von|mit)\s+(?:mobile|phone|handy|smartphone)$",
        re.IGNORECASE,
    ),
    re.compile(
        r"^(?:get|download|hole dir|holen sie sich|obtenir|obtener|scarica)?\s*outlook"
        r"\s+(?:for|für|pour|para|per)\s+(?:ios|android)\b.{0,20}$",
        re.IGNORECASE,
    ),
    re.compile(r"^diese nachricht wurde von meinem .{1,60} gesendet\.?$", re.IGNORECASE),
)
_URL_RE = re.compile(r"<?https?://\S*>?|<mailto:[^>]*>")
_MD_LINK_RE = re.compile(r"\[([^\]]*)\]\([^)]*\)")

# Trailing lines with nothing but separator characters ("____", "====", "ᐧ").
_JUNK_LINE = re.compile(r"^[\s\-_=*#~+.·•ᐧ—–|]*$")

_MAX_ATTRIBUTION = 350  # characters of a joined attribution window
_MAX_SIGNATURE_LINES = 15  # non-blank lines after a bare "--" that still make a signature
_CONTINUATION_MIN = 60  # a quoted line this long may have been hard-wrapped by the client
_MAX_HEADER_LINES = 25  # lines one header block may span (bounds the work on hostile input)


# --------------------------------------------------------------------------------------
# Line helpers
# --------------------------------------------------------------------------------------


def _clean(line: str) -> str:
    """The line as the patterns see it: no invisible marks, plain spaces."""
    return _INVISIBLE.sub("", line).replace("\xa0", " ")


def _is_blank(line: str) -> bool:
    return not line.strip()


def _is_quote(line: str) -> bool:
    return line.lstrip().startswith(">")


def _is_sig_delimiter(line: str) -> bool:
    """``-- `` (RFC 3676), or the ``--`` / ``__`` that clients leave once spaces are trimmed."""
    return line.rstrip() in ("--", "__")


def _footer_text(line: str) -> str:
    """A line with its links and decoration removed, for the footer patterns."""
    text = _MD_LINK_RE.sub(r"\1", line)
    text = _URL_RE.sub(" ", text)
    return text.strip().strip("*_()<>[]").strip().rstrip(".")


def _is_footer(line: str) -> bool:
    """A whole-line mobile/webmail footer such as "Von meinem iPhone gesendet"."""
    if _is_quote(line) or len(line) > 200:
        return False
    text = _footer_text(line)
    if not text or len(text) > 90 or len(text.split()) > 12:
        return False
    return any(pattern.match(text) for pattern in _FOOTER_RES)


def _is_separator(line: str) -> bool:
    """ "-----Original Message-----", "Begin forwarded message:" and their translations."""
    if _is_quote(line) or len(line) > 120:
        return False
    match = _SEPARATOR_RE.match(line)
    if match is None:
        return False
    phrase = match.group("phrase").lower()
    return bool(match.group("lead")) or phrase in _FORWARD_INTROS or line.strip().endswith(":")


def _field(line: str) -> tuple[str, str] | None:
    """(kind, value) of a header line such as "*Von:* Anna <a@b.de>"; None otherwise."""
    if _is_quote(line) or len(line) > 1000:
        return None
    match = _FIELD_RE.match(line)
    if match is None:
        return None
    return _FIELD_KIND[match.group("name").lower()], match.group("value").strip()


def _header_block(lines: Sequence[str], start: int) -> tuple[int, dict[str, str]] | None:
    """The header block starting at ``start``: (end index, first value per field kind).

    Fields may wrap onto up to two continuation lines (long names and addresses do), and
    single blank lines between fields are tolerated (HTML-converted Outlook headers).
    """
    if _field(lines[start]) is None:
        return None
    fields: dict[str, str] = {}
    last_kind = ""
    index = start
    end = start
    continuation = 0
    stop = min(len(lines), start + _MAX_HEADER_LINES)
    while index < stop:
        line = lines[index]
        found = _field(line)
        if found is not None:
            kind, value = found
            fields.setdefault(kind, value)
            last_kind = kind
            continuation = 0
            end = index + 1
        elif _is_blank(line):
            following = index + 1
            if following < stop and _field(lines[following]) is not None:
                index = following
                continue
            break
        else:
            continuation += 1
            if continuation > 2 or _is_quote(line):
                break
            if last_kind == "from" and fields.get("from") is not None:
                fields["from"] = f"{fields['from']} {line.strip()}"
            end = index + 1
        index += 1
    return end, fields


def _is_header_block(fields: dict[str, str]) -> bool:
    """A sender plus two other fields, or an addressed sender plus a date.

    "From: x" alone, or a pasted itinerary ("Von: Berlin / Datum: 12.03."), is prose.
    """
    sender = fields.get("from")
    if sender is None:
        return False
    if len(fields) >= 3:
        return True
    return "date" in fields and _EMAIL_RE.search(sender) is not None


def _attribution(window: str, quote_follows: bool) -> bool:
    """Whether joined line(s) read as an attribution ("Am 12.03.2024 schrieb Anna <…>:").

    A verb alone is not enough ("as my colleague wrote:"): there must also be an address,
    a quote right below, or a date in an attribution-like position.
    """
    text = window.strip().strip("-_*").strip()
    if not text or len(text) > _MAX_ATTRIBUTION:
        return False
    # Every pattern below but two needs a colon at the end; the other two need "wrote" at
    # the end or four digits at the start. Prose lines have none of these, and this check
    # spares them the regex searches, which made stripping quadratic-ish on long bodies.
    if text[-1] not in ":：" and text[-5:].lower() != "wrote" and not text[:4].isdigit():
        return False
    return _attribution_evidence(text, quote_follows)


def _attribution_evidence(text: str, quote_follows: bool) -> bool:
    """The attribution rules proper, on the stripped window (see :func:`_attribution`)."""
    has_email = _EMAIL_RE.search(text) is not None
    has_date = _DATE_RE.search(text) is not None
    first_digit = next((i for i, ch in enumerate(text) if ch.isdigit()), len(text))
    dated_start = _STRONG_DATE_RE.search(text) is not None and (
        _ATTR_START.match(text) is not None or first_digit <= 12
    )
    evidence = has_email or quote_follows or dated_start
    if _ATTR_VERB_END.search(text) and evidence:
        return True
    if _ATTR_ON_WROTE.match(text) and has_date:
        return True
    if _ATTR_VERB_MID.search(text) and evidence:
        return True
    if has_email and has_date and _ATTR_ADDRESS_END.search(text):
        return True
    return _ATTR_GMAIL_DATE.match(text) is not None


def _next_content(lines: Sequence[str], index: int) -> int | None:
    """Index of the first non-blank line at or after ``index``."""
    while index < len(lines):
        if not _is_blank(lines[index]):
            return index
        index += 1
    return None


def _is_tail(line: str) -> bool:
    """A wrapped attribution's continuation ("<a@b.de> wrote:", "a écrit :", ">:").

    Such a line matches the attribution patterns on its own, but the attribution starts
    above it: a window must not stop at it while a longer one matches too.
    """
    text = line.strip()
    return (
        text[:1] in "<>(["
        or text.lower().startswith("mailto:")
        or _EMAIL_RE.match(text) is not None
        or _TAIL_VERB.match(text) is not None
    )


def _attribution_ending(lines: Sequence[str], end: int, lowest: int) -> int | None:
    """Start of an attribution whose last line is ``end``, or None.

    Attributions wrap over up to four lines ("Le 4 janv. 2016 19:03, "Neil"\n<x@y>\na
    écrit :"). The shortest window that matches and does not start with a continuation
    wins, so a paragraph directly above is not swallowed; windows only span blank lines
    when they open like an attribution. A dated opening line above the match ("On Nov 21,
    2014,\nat 10:18,\nJohn <j@x> wrote:") is taken along.
    """
    last = lines[end]
    if _is_blank(last) or len(last) > 400:
        return None
    if _is_quote(last) and not _QUOTED_VERB_TAIL.match(last.strip()):
        return None
    nxt = _next_content(lines, end + 1)
    quote_follows = nxt is not None and _is_quote(lines[nxt])
    parts: list[str] = []
    content = 0
    start = end
    found: int | None = None
    while start >= lowest and end - start < 6 and content < 4:
        line = lines[start]
        if _is_blank(line):
            start -= 1
            continue
        if start != end and (_is_quote(line) or len(line) > 400):
            break
        parts.insert(0, line.strip())
        content += 1
        spans_blank = end - start + 1 > content
        if not (spans_blank and not _ATTR_START.match(line.strip())) and _attribution(
            " ".join(parts), quote_follows
        ):
            found = start
            if not _is_tail(line):
                break
        start -= 1
    if found is None or _is_tail(lines[found]):
        return found
    # Take along a dated opening line or two: "On Nov 21, 2014," / "at 10:18,".
    best = found
    for above in range(found - 1, max(found - 3, lowest - 1), -1):
        line = lines[above].strip()
        if not line or _is_quote(line) or len(line) > 80 or line.endswith((".", "!", "?")):
            break
        if _ATTR_START.match(line) and _DATE_RE.search(line):
            best = above
    return best


# --------------------------------------------------------------------------------------
# Finding where the history starts
# --------------------------------------------------------------------------------------


def _marker_at_end(lines: Sequence[str], index: int, lowest: int) -> tuple[int, str] | None:
    """A history marker whose detection completes at line ``index``: (start, kind)."""
    line = lines[index]
    if _is_separator(line):
        return index, "separator"
    block = _header_block(lines, index)
    if block is not None and _is_header_block(block[1]):
        return index, "header"
    start = _attribution_ending(lines, index, lowest)
    if start is not None:
        return start, "attribution"
    return None


def _quote_block_end(lines: Sequence[str], index: int) -> int:
    """End (exclusive) of the ``>`` block starting at ``index``, blank lines inside included.

    A short unquoted line squeezed between two quoted lines, under a long one, is the
    client's hard wrap of the quoted line, not an answer.
    """
    end = index
    cursor = index
    while cursor < len(lines):
        line = lines[cursor]
        if _is_quote(line):
            end = cursor + 1
        elif _is_blank(line):
            pass
        elif (
            cursor + 1 < len(lines)
            and _is_quote(lines[cursor + 1])
            and _is_quote(lines[cursor - 1])
            and len(lines[cursor - 1].rstrip()) >= _CONTINUATION_MIN
        ):
            end = cursor + 1
        else:
            break
        cursor += 1
    return end


def _starts_history(lines: Sequence[str], index: int, depth: int = 0) -> bool:
    """Whether a signature, footer or hard history marker begins exactly at ``index``."""
    line = lines[index]
    if _is_sig_delimiter(line) or _is_footer(line) or _is_separator(line):
        return True
    block = _header_block(lines, index)
    if block is not None and _is_header_block(block[1]):
        return True
    for end in range(index, min(index + 6, len(lines))):
        if _attribution_ending(lines, end, index) == index:
            return depth > 8 or _is_hard_attribution(lines, end, depth + 1)
    return False


def _is_hard_attribution(lines: Sequence[str], end: int, depth: int = 0) -> bool:
    """Whether the attribution ending at ``end`` starts history rather than inline quoting.

    It does unless a ``>`` block follows it *and* new text follows that block: then the
    customer answered between the quotes, and the whole exchange is kept.
    """
    quote = _next_content(lines, end + 1)
    if quote is None or not _is_quote(lines[quote]):
        return True
    after = _next_content(lines, _quote_block_end(lines, quote))
    return after is None or _starts_history(lines, after, depth)


def _history_start(lines: Sequence[str]) -> int:
    """Index of the first line of quoted/forwarded history (``len(lines)`` when none)."""
    lowest = 0
    index = 0
    while index < len(lines):
        found = _marker_at_end(lines, index, lowest)
        if found is None:
            index += 1
            continue
        start, kind = found
        if kind != "attribution" or _is_hard_attribution(lines, index):
            return start
        quote = _next_content(lines, index + 1)
        if quote is None:  # cannot happen: a soft attribution has a quote block below
            return start
        index = lowest = _quote_block_end(lines, quote)
    return len(lines)


def _signature_start(lines: Sequence[str], limit: int) -> int:
    """First signature delimiter or mobile footer before ``limit`` (``limit`` when none)."""
    for index in range(limit):
        line = lines[index]
        if _is_footer(line):
            return index
        if _is_sig_delimiter(line):
            if line.rstrip("\n") == "-- ":
                return index
            if _short_tail(lines, index + 1, limit):
                return index
    return limit


def _short_tail(lines: Sequence[str], start: int, limit: int) -> bool:
    """Whether at most ``_MAX_SIGNATURE_LINES`` non-blank lines lie in ``start:limit``."""
    count = 0
    for index in range(start, limit):
        if not _is_blank(lines[index]):
            count += 1
            if count > _MAX_SIGNATURE_LINES:
                return False
    return True


def _drop_trailing_junk(lines: list[str]) -> None:
    """Drop blank and separator-only lines left at the end by a cut ("____", "-----")."""
    while lines and _JUNK_LINE.match(lines[-1]):
        lines.pop()


def _drop_trailing_quote(lines: list[str]) -> None:
    """Remove a trailing ``>`` block and the attribution line(s) introducing it."""
    end = len(lines)
    if not end or not _is_quote(lines[-1]):
        return
    start = end - 1
    while start > 0:
        above = lines[start - 1]
        if (
            _is_quote(above)
            or _is_blank(above)
            or (
                start - 2 >= 0
                and _is_quote(lines[start - 2])
                and len(lines[start - 2].rstrip()) >= _CONTINUATION_MIN
                and _is_quote(lines[start])
            )
        ):
            start -= 1
        else:
            break
    while start < end and _is_blank(lines[start]):
        start += 1
    del lines[start:]
    if not lines:
        return
    last = len(lines) - 1
    while last >= 0 and _is_blank(lines[last]):
        last -= 1
    if last < 0:
        return
    # The attribution of the removed block: judged as if the quote still followed it.
    probe = [*lines[: last + 1], "> "]
    begin = _attribution_ending(probe, last, 0)
    if begin is not None:
        del lines[begin:]


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def strip_quoted(text: str) -> str:
    """The new text of a reply body, without quoted history, signature and mobile footer.

    Cuts at the first hard history marker (separator line, header block, attribution not
    followed by inline answers), at an earlier ``-- `` signature or mobile footer, then
    drops a trailing ``>`` block with its attribution. Inline answers between quotes are
    kept. If nothing would be left, the original text (stripped) is returned: an empty
    comment would hide that the customer sent anything at all.
    """
    return split_history(text)[0]


def split_history(text: str) -> tuple[str, str]:
    """The new text (as :func:`strip_quoted` gives it) and what follows it: signature,
    quoted or forwarded history, "" when there is none.

    For a reader who needs both, new text first: an agent told of a new ticket reads what
    the customer wrote, and below it what they quoted or forwarded, which may be the point
    (a forwarded invoice).
    """
    normalised = as_lf(text)
    if not normalised.strip():
        return "", ""
    lines = normalised.split("\n")
    clean = [_clean(line) for line in lines]
    cut = _history_start(clean)
    cut = _signature_start(clean, cut)
    kept_clean = clean[:cut]
    _drop_trailing_junk(kept_clean)
    _drop_trailing_quote(kept_clean)
    _drop_trailing_junk(kept_clean)
    kept = lines[: len(kept_clean)]
    while kept and _is_blank(kept[0]):
        kept.pop(0)
    result = "\n".join(kept).rstrip()
    if not result.strip():
        return normalised.strip(), ""
    return result, "\n".join(lines[len(kept_clean) :]).strip()


HISTORY_LINES = 60  # of quoted history shown below a new ticket's text in agents' mail


def shown_history(history: str) -> str:
    """History cut to :data:`HISTORY_LINES` lines, saying that it was: the ticket keeps it."""
    lines = history.split("\n")
    if len(lines) <= HISTORY_LINES:
        return history
    return "\n".join([*lines[:HISTORY_LINES], f"[… {len(lines) - HISTORY_LINES} more lines]"])


def _parse_sender(value: str) -> tuple[str, str] | None:
    """(display name, lower-cased address) from a header value as clients render it.

    Handles "Anna Schmidt <anna@kunde.de>", ""Schmidt, Anna" <…>", "Anna [mailto:…]",
    "anna@kunde.de (Anna)", Outlook's HTML residue "Anna <anna@x<mailto:anna@x>>" and
    "&lt;…&gt;" entities.
    """
    value = html.unescape(_clean(value)).strip().strip("*_").strip()
    match = _EMAIL_RE.search(value)
    if match is None:
        return None
    address = match.group(0).strip(".").lower()
    name = value[: match.start()]
    if not name.strip(" <[(\"'"):
        tail = re.sub(r"<[^>]*>|\[[^\]]*\]", " ", value[match.end() :]).strip(" >]")
        if tail.startswith("(") and ")" in tail:
            tail = tail[1 : tail.index(")")]
        name = tail
    name = re.sub(r"\[?mailto:\s*$", "", name.strip(), flags=re.IGNORECASE)
    name = name.strip().rstrip("<[(").strip().strip("\"'").strip()
    name = re.sub(r"\s+", " ", name)
    if name.lower() == address or _EMAIL_RE.fullmatch(name):
        name = ""
    return name, address


def forwarded_original(text: str) -> tuple[str, str] | None:
    """The original sender (display name, lower-cased email) of an inline forward.

    A forwarded mail arrives from the colleague who forwarded it; the ticket belongs to the
    person in the forwarded header block. Looks at the first forward/original-message
    separator, else the first Outlook-style header block, and reads its sender field. Only
    the first block counts: deeper blocks are older messages from other people, so a first
    block without a usable address gives None rather than a wrong sender.
    """
    normalised = as_lf(text)
    # Apple Mail quotes forwarded messages ("> Begin forwarded message:"): unquote for this.
    lines = [re.sub(r"^\s*(?:>\s?)+", "", _clean(line)) for line in normalised.split("\n")]
    for index, line in enumerate(lines):
        if _is_separator(line):
            start = _next_content(lines, index + 1)
            if start is None or start - index > 4:
                return None
            block = _header_block(lines, start)
            if block is None:
                return None
            sender = block[1].get("from")
            return _parse_sender(sender) if sender else None
        block = _header_block(lines, index)
        if block is not None and _is_header_block(block[1]):
            return _parse_sender(block[1]["from"])
    return None
