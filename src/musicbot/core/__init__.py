"""The pure-Trio core: actors, messages, the cache and the ports adapters plug into.

Nothing under this package imports discord, asyncio, trio_asyncio or yt_dlp
(tests/test_boundaries.py proves it).
"""
