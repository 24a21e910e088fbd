"""musicbot: a Discord music bot on Trio structured concurrency."""

__version__ = "0.1.0"
