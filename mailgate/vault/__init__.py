"""The vault: credentials found in mail, encrypted at rest, each behind one-time links.

``crypto`` seals and opens values and makes the link tokens; ``store`` keeps the rows
(values written with their comment, links written with the agent's notification, the one
reveal); ``pages`` serves ``/secret/<token>`` on mailgate's HTTP listener; ``cli`` is
``mailgate secrets``.
"""
