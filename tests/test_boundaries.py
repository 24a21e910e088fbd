"""The core is pure Trio: importing it never drags discord, asyncio or yt-dlp in."""

import subprocess
import sys

import pytest

FORBIDDEN = ("discord", "asyncio", "trio_asyncio", "yt_dlp", "aiohttp")


@pytest.mark.parametrize(
    "module",
    [
        "musicbot.core",
        "musicbot.core.cache",
        "musicbot.core.mailbox",
        "musicbot.core.messages",
        "musicbot.core.player",
        "musicbot.core.ports",
        "musicbot.core.supervisor",
        "musicbot.core.services",
        "musicbot.core.pacing",
        "musicbot.testing",
    ],
)
def test_module_imports_nothing_from_the_asyncio_world(module: str) -> None:
    probe = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{FORBIDDEN!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == []


def test_the_probe_would_notice_a_forbidden_import() -> None:
    probe = "import sys, asyncio; print('asyncio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "True"
