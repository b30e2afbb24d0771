"""The pure stages of ingest: bytes in, a typed decision out, no database and no clock.

``prepare`` (parse, read, prefetch) → the store gathers :class:`~.facts.Facts` →
``decide`` (the ladder in :data:`~.decide.STAGES`) → the store applies the
:mod:`~.decision`. See :mod:`mailgate.ingest` for the one place they meet.
"""
