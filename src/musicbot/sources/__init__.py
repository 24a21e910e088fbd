"""Resolvers: what a user typed, turned into tracks (the core's Resolver port)."""
