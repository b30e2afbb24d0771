"""The steps of reading a mail that :mod:`mailgate.parser` delegates, one module each.

* ``charsets``: bytes to storable text;
* ``headers``: header values: unfolding, RFC 2047 words;
* ``fields``: Message-IDs, addresses, dates;
* ``htmltext``: HTML to text;
* ``headblock``: the raw header block: start, repair, end;
* ``mime``: the MIME walk: body and attachments;
* ``large``: large base64 attachments decoded beside the parse.

The rest of mailgate imports from :mod:`mailgate.parser` only (the names in its
``__all__``): ``parse``, the ``InboundMessage`` it returns and the types it holds.
"""
