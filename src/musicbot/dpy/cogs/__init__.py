"""Cogs: each turns one interaction into one request to the core and renders the answer."""
