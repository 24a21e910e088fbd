"""Resolvers: what a user typed, turned into tracks (the core's Resolver port).

- `query`: cleans and classifies what was typed: a link, or words to search for.
- `safety`: UrlPolicy, which links may be fetched (no private networks), and ffmpeg's whitelist.
- `ytdl`: YtdlResolver, the Resolver over yt-dlp in worker threads; GuardedYoutubeDL.
- `info`, `failures`: yt-dlp's results and exceptions, read into values and plain words.
- `settings`: SourceSettings, what the composition root chooses.
- `direct`: DirectResolver, a direct link as one track with no lookup (no yt-dlp).

Importing this package imports nothing heavy; `musicbot.sources.ytdl` imports yt-dlp.
"""
