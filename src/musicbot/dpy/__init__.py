"""The discord.py adapter: the only package that imports discord, asyncio or trio_asyncio."""
