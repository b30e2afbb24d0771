"""mailgate: an inbound email-to-ticket daemon for support teams."""

__version__ = "0.1.0"
