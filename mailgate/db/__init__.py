"""What :mod:`mailgate.store` delegates: statements, queries and writes, by what they own."""
