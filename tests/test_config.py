from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main
from bot.config import Settings, from_env
from bot.errors import ConfigError


def test_defaults_and_environment() -> None:
    assert from_env({}) == Settings()
    s = from_env({"DESKMATE_PORT": "9000", "REDIS_URL": "redis://h:1/0",
                  "DESKMATE_PROJECT": "/x", "DESKMATE_RATE_WINDOW": "2.5",
                  "DESKMATE_LOG_LEVEL": "debug"})
    assert (s.port, s.redis_url, s.project, s.rate_window, s.log_level) == (
        9000, "redis://h:1/0", Path("/x"), 2.5, "DEBUG")
    # DESKMATE_REDIS_URL wins over REDIS_URL; flags (replace) win over both.
    s = from_env({"REDIS_URL": "redis://a", "DESKMATE_REDIS_URL": "redis://b"})
    assert s.redis_url == "redis://b"
    assert s.replace(redis_url="redis://c", port=None).redis_url == "redis://c"


@pytest.mark.parametrize(("env", "name"), [
    ({"DESKMATE_PORT": "eighty"}, "DESKMATE_PORT"),
    ({"DESKMATE_PORT": "70000"}, "DESKMATE_PORT"),
    ({"DESKMATE_REDIS_URL": "localhost:6379"}, "DESKMATE_REDIS_URL"),
    ({"DESKMATE_LOG_LEVEL": "LOUD"}, "DESKMATE_LOG_LEVEL"),
    ({"DESKMATE_MAX_FRAME_BYTES": "10"}, "DESKMATE_MAX_FRAME_BYTES"),
    ({"DESKMATE_RATE_WINDOW": "0"}, "DESKMATE_RATE_WINDOW"),
])
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_env(env)
    assert name in str(info.value)


def test_cli_reports_config_errors(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DESKMATE_PORT", "eighty")
    assert main(["config"]) == 2
    assert "DESKMATE_PORT" in capsys.readouterr().err
    monkeypatch.setenv("DESKMATE_PORT", "8081")
    assert main(["config"]) == 0
    assert "8081" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["DESKMATE_TURN_LOCK_TTL", "DESKMATE_RATE_WINDOW",
                                  "DESKMATE_RATE_IP_WINDOW", "DESKMATE_SHUTDOWN_GRACE"])
@pytest.mark.parametrize("raw", ["inf", "-inf", "nan", "Infinity"])
def test_float_settings_must_be_finite(name: str, raw: str) -> None:
    """float() reads "inf" and "nan": DESKMATE_TURN_LOCK_TTL=inf started a server whose
    every turn then raised OverflowError (an infinite TTL in milliseconds)."""
    with pytest.raises(ConfigError, match="finite") as info:
        from_env({name: raw})
    assert name in str(info.value)
    with pytest.raises(ConfigError, match=name):                # a CLI flag is checked too
        Settings().replace(**{name.removeprefix("DESKMATE_").lower(): float(raw)})


def test_a_bad_redis_url_names_the_variable_it_came_from() -> None:
    """Only REDIS_URL set (as Docker and PaaS setups do) and wrong: the message named
    DESKMATE_REDIS_URL, a variable the operator never set."""
    with pytest.raises(ConfigError) as info:
        from_env({"REDIS_URL": "localhost:6379"})
    assert info.value.name == "REDIS_URL" and str(info.value).startswith("REDIS_URL: ")
    with pytest.raises(ConfigError) as info:
        from_env({"DESKMATE_REDIS_URL": "localhost:6379", "REDIS_URL": "redis://fine:6379/0"})
    assert info.value.name == "DESKMATE_REDIS_URL"
    with pytest.raises(ConfigError, match="DESKMATE_REDIS_URL"):  # a flag (--redis-url) too
        Settings().replace(redis_url="localhost:6379")


@pytest.mark.parametrize("where", ["default", "flag"])
def test_bench_load_checks_its_output_folder_before_running(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        where: str) -> None:
    """`deskmate bench load` run outside the repository (no docs/ folder there) used to
    fail with FileNotFoundError when writing docs/benchmarks.md, after the whole run."""
    import bot.loadgen

    def run_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the load ran before its output file was checked")

    monkeypatch.setattr(bot.loadgen, "run_load", run_load)
    monkeypatch.chdir(tmp_path)
    argv = ["bench", "load", "--turns-per-second", "1"]
    if where == "flag":
        argv += ["--out", str(tmp_path / "missing" / "bench.md")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "no such folder" in err
