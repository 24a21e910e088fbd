"""The fake's permission bits are Discord's (as discord.py knows them)."""

from __future__ import annotations

import discord
import pytest

from musicbot.testing.loopback import permissions


@pytest.mark.parametrize("name", sorted(permissions.BITS))
def test_bit_matches_discord_py(name: str) -> None:
    assert discord.Permissions(**{name: True}).value == permissions.BITS[name]


def test_administrator_means_everything() -> None:
    assert permissions.effective([permissions.BITS["administrator"]]) == permissions.ALL
    assert permissions.effective([0], owner=True) == permissions.ALL
    assert (
        permissions.effective([permissions.BITS["manage_guild"]])
        == permissions.BITS["manage_guild"]
    )
    with pytest.raises(ValueError, match="unknown permission"):
        permissions.from_names(["make_coffee"])
