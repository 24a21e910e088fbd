import json
from pathlib import Path

import pytest

from musicbot.cli import main
from musicbot.config import ConfigError, Settings, load_settings, parse_shard_ids


def test_defaults_are_the_original_spec_and_real_discord() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert (settings.max_connections, settings.idle_timeout, settings.cleanup_interval) == (
        10,
        3600.0,
        300.0,
    )
    assert settings.track_cache_ttl == 1800.0
    assert settings.api_base_url == "https://discord.com/api/v10"
    assert settings.gateway_url == "wss://gateway.discord.gg"
    assert settings.token is None


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "musicbot.toml"
    config.write_text(
        "[musicbot]\nmax_connections = 3\nidle_timeout = 60\ncommand_guilds = [1, 2]\n"
        'api_base_url = "http://127.0.0.1:9/api/v10"\n'
    )
    environ = {"MUSICBOT_IDLE_TIMEOUT": "30.5", "DISCORD_TOKEN": "secret-token-value"}
    settings = load_settings(config, environ=environ, cleanup_interval=5)
    assert settings.max_connections == 3
    assert settings.idle_timeout == 30.5
    assert settings.cleanup_interval == 5
    assert settings.command_guilds == (1, 2)
    assert settings.api_base_url == "http://127.0.0.1:9/api/v10"
    assert settings.token == "secret-token-value"


def test_environment_lists_are_comma_separated() -> None:
    settings = load_settings(environ={"MUSICBOT_COMMAND_GUILDS": "5, 6"})
    assert settings.command_guilds == (5, 6)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_connections = 0", "max_connections must be at least 1, not 0"),
        ("idle_timeout = -1", "idle_timeout must be positive"),
        ('max_connections = "ten"', "max_connections in .* must be a whole number, not 'ten'"),
        ("max_connections = 2.5", "max_connections in .* must be a whole number"),
        ("colour = 1", "unknown setting 'colour'"),
        ("max_connections = ", "is not valid TOML"),
        ('gateway_url = "gateway.discord.gg"', "gateway_url must be an http"),
        ("shard_ids = [0, 1]", "shard_ids needs shard_count"),
        ("shard_count = 2\nshard_ids = [1, 2]", r"shard_ids must be between 0 and 1 .* not 2"),
        ("shard_count = 0", "shard_count must be at least 1"),
    ],
)
def test_invalid_files_say_what_is_wrong_in_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message) as error:
        load_settings(config, environ={})
    assert "\n" not in str(error.value)


def test_invalid_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="MUSICBOT_MAX_CONNECTIONS must be a whole number"):
        load_settings(environ={"MUSICBOT_MAX_CONNECTIONS": "lots"})


def test_a_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.toml does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_masked_hides_the_token() -> None:
    masked = Settings(token="abcdefghijklmnop").masked()
    assert masked["token"] == "abcd…(16 characters)"
    assert "abcdefghijklmnop" not in repr(Settings(token="abcdefghijklmnop"))


def test_run_without_a_token_explains_and_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no bot token: set DISCORD_TOKEN=<token>" in err


def test_run_with_an_invalid_config_exits_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("max_connections = 0\n")
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == "musicbot: max_connections must be at least 1, not 0\n"


def test_check_config_prints_effective_settings_with_the_token_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "abcdefghijklmnop")
    config = tmp_path / "ok.toml"
    config.write_text("max_connections = 4\n")
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert '"max_connections": 4' in out
    assert "abcdefghijklmnop" not in out
    assert "abcd…(16 characters)" in out


def test_shards_from_the_environment() -> None:
    settings = load_settings(environ={"MUSICBOT_SHARD_COUNT": "4", "MUSICBOT_SHARD_IDS": "2,3"})
    assert (settings.shard_count, settings.shard_ids) == (4, (2, 3))


@pytest.mark.parametrize(
    ("text", "shards"),
    [("0-3", (0, 1, 2, 3)), ("4", (4,)), ("0,2,5-7", (0, 2, 5, 6, 7)), (" 1 , 3-3 ", (1, 3))],
)
def test_shard_ids_take_numbers_and_ranges(text: str, shards: tuple[int, ...]) -> None:
    assert parse_shard_ids(text) == shards
    environ = {"MUSICBOT_SHARD_COUNT": "8", "MUSICBOT_SHARD_IDS": text}
    assert load_settings(environ=environ).shard_ids == shards


@pytest.mark.parametrize("text", ["0-x", "3-1", "1,1", "0-2,2", "-1", "a"])
def test_shard_ids_that_make_no_sense_are_refused_plainly(text: str) -> None:
    with pytest.raises(ConfigError, match="must be shard numbers and ranges, like 0-3"):
        load_settings(environ={"MUSICBOT_SHARD_COUNT": "8", "MUSICBOT_SHARD_IDS": text})


def test_the_command_line_shard_options_override_the_file_and_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "musicbot.toml"
    config.write_text("shard_count = 2\nshard_ids = [1]\n")
    monkeypatch.setenv("MUSICBOT_SHARD_COUNT", "3")
    argv = ["check-config", "--config", str(config), "--shard-count", "8", "--shard-ids", "4-7"]
    assert main(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["shard_count"], shown["shard_ids"]) == (8, [4, 5, 6, 7])


def test_a_bad_shard_option_is_one_line_and_exit_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--shard-count", "2", "--shard-ids", "0-2"]) == 2
    error = capsys.readouterr().err
    assert error == "musicbot: shard_ids must be between 0 and 1 (shard_count is 2), not 2\n"
