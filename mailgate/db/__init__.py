"""What :mod:`mailgate.store` delegates: the SQL beside the store's face.

``store.py`` keeps the engine, migrations, transactions and group commits; the modules
here hold what runs inside those transactions (the fast path for prebuilt statements,
SQLite's writer lock and log, the config sync, the shared write helpers and the CLI's
read side), so each can be read, and tested, on its own.
"""
