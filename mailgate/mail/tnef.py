"""Outlook's ``winmail.dat`` (TNEF, ``application/ms-tnef``) unpacked into the files it carries.

Outlook and Exchange wrap a mail's attachments into one TNEF stream that only Outlook can
open; every other mail client shows an opaque ``winmail.dat``. The carried files are added
beside the original (which stays, byte for byte) as ordinary attachments, so an agent on
any mail client can open them. The stream is decoded by tnefparse, a maintained library.

What is not unpacked, and why:

* a TNEF that carries no file (only the mail's RTF or HTML body, as Outlook sends a
  formatted mail): the mail's own text part already has the body; the original is kept;
* files of an embedded message (an attached Outlook item) are unpacked, down to
  :data:`_MAX_DEPTH` levels; the embedded message itself is no file a customer or an
  agent could open, and stays inside the original;
* empty files.

Hostile input is bounded. TNEF compresses nothing but the RTF body (which is not
decompressed here), so the carried files together are never larger than the stream; but
tnefparse copies the rest of the stream once per TNEF object it reads, so its work grows
with objects times size. :func:`_cost` walks the objects' headers first, of the stream and
of every stream nested in it, and a stream above :data:`_MAX_OBJECTS` or
:data:`_MAX_COPY` is left as it is. A stream tnefparse cannot read is left as it is too.
Either way the original is kept and the reason comes back for the mail's defects.
"""

from __future__ import annotations

import logging
import mimetypes
import struct
from collections.abc import Iterable

from tnefparse import properties
from tnefparse.tnef import TNEF, TNEFAttachment

from mailgate.mail.mime import Attachment, _safe_filename

log = logging.getLogger(__name__)

TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})
_SIGNATURE = struct.pack("<I", TNEF.TNEF_SIGNATURE)
_OBJECT_HEADER = struct.Struct("<BHHI")  # level, name, type, length; then data and checksum
_MAX_OBJECTS = 20_000  # TNEF objects in one stream and the streams nested in it
# Bytes tnefparse copies (the rest of a stream per object read): 2 GB took 0.16 s on a
# 2-core machine (2,000 objects of 1 kB). Outlook's winmail.dat of 25 MB with one file has
# some 20 objects: 500 MB; the corpus's 1.5 MB sample 18 MB.
_MAX_COPY = 2 << 30
_MAX_DEPTH = 4  # embedded messages unpacked inside one another
_MIME = mimetypes.MimeTypes()  # built-in table only: the same types on every host

# tnefparse logs each checksum mismatch and unknown attribute: noise for a mail server.
logging.getLogger("tnefparse").setLevel(logging.ERROR)


def is_tnef(part: Attachment) -> bool:
    """An Outlook TNEF stream: by its type, or by its name when sent as octet-stream."""
    if part.content_type in TNEF_TYPES:
        return True
    return part.filename.lower() == "winmail.dat" and part.data.startswith(_SIGNATURE)


def _cost(data: bytes) -> tuple[int, int]:
    """(objects, bytes copied) tnefparse would spend on ``data``, from the object headers.

    Every place the TNEF signature occurs counts as a stream of its own, read to the end
    of ``data``: nested streams sit inside an attachment's data, and counting from their
    start to the end overestimates, which is on the safe side.
    """
    objects = copied = 0
    start = data.find(_SIGNATURE)
    while start != -1:
        offset = start + 6  # signature and key
        while offset + 12 < len(data):
            _level, _name, _type, length = _OBJECT_HEADER.unpack_from(data, offset)
            objects += 1
            copied += len(data) - offset
            if objects > _MAX_OBJECTS or copied > _MAX_COPY:
                return objects, copied
            offset += min(len(data) - offset, length + 11)
        start = data.find(_SIGNATURE, start + 1)
    return objects, copied


def _content_type(filename: str, declared: object) -> str:
    """The carried file's type: by its name, else the MIME tag Outlook stored, else bytes."""
    guessed, _ = _MIME.guess_type(filename, strict=False)
    if guessed:
        return guessed
    if isinstance(declared, bytes):
        declared = declared.decode("ascii", "replace")
    if isinstance(declared, str) and "/" in declared:
        return declared.strip("\x00").strip().lower()
    return "application/octet-stream"


def _files(
    attachments: Iterable[TNEFAttachment], depth: int, number: list[int]
) -> Iterable[Attachment]:
    """Each carried file (those of embedded messages too) as an attachment, in order."""
    for item in attachments:
        embedded = getattr(item, "embed", None)
        if isinstance(embedded, TNEF):
            if depth < _MAX_DEPTH:
                yield from _files(embedded.attachments, depth + 1, number)
            continue
        data = item.data if isinstance(item.data, bytes) else b""
        if not data:
            continue
        number[0] += 1
        name = item.long_filename()
        name = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        filename = _safe_filename(name) or f"winmail-{number[0]}.bin"
        tags = [a.data for a in item.mapi_attrs if a.name == properties.MAPI_ATTACH_MIME_TAG]
        yield Attachment(
            filename=filename,
            content_type=_content_type(filename, tags[0] if tags else None),
            content_id=None,
            data=data,
        )


def unpack(part: Attachment) -> tuple[tuple[Attachment, ...], str | None]:
    """The files a TNEF attachment carries, and why there are none when it could not be read.

    Never raises: a broken stream keeps its mail (the original stays an attachment).
    """
    objects, copied = _cost(part.data)
    if objects > _MAX_OBJECTS or copied > _MAX_COPY:
        reason = f"{part.filename}: TNEF too complex to unpack ({objects} objects); kept as is"
        log.warning("%s", reason)
        return (), reason
    try:
        stream = TNEF(part.data, do_checksum=False)
        files = tuple(_files(stream.attachments, 0, [0]))
    except Exception as exc:  # a broken stream; RecursionError from deep nesting too
        reason = f"{part.filename}: unreadable TNEF ({type(exc).__name__}); kept as is"
        log.warning("%s", reason)
        return (), reason
    return files, None


def unpack_all(
    attachments: tuple[Attachment, ...],
) -> tuple[tuple[Attachment, ...], tuple[str, ...]]:
    """The attachments with the files each TNEF carries right after it; the problems."""
    if not any(map(is_tnef, attachments)):
        return attachments, ()
    result: list[Attachment] = []
    problems: list[str] = []
    for part in attachments:
        result.append(part)
        if is_tnef(part):
            files, problem = unpack(part)
            result.extend(files)
            if problem:
                problems.append(problem)
    return tuple(result), tuple(problems)
