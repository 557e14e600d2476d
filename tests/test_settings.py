from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import Settings, SettingsError, load_settings, mask_url


def test_defaults_then_file_then_environment(tmp_path: Path) -> None:
    config = tmp_path / "tribune.toml"
    config.write_text(
        'port = 9000\nlog_level = "debug"\n[redis]\nprefix = "file:"\n[jwt]\naudience = "file-aud"\n'
    )
    settings = load_settings(config, environ={"TRIBUNE_PORT": "9100", "TRIBUNE_JWT_AUDIENCE": "env-aud"})
    assert settings.port == 9100  # environment beats the file
    assert settings.jwt_audience == "env-aud"
    assert settings.redis_prefix == "file:"  # file beats the default; tables flatten to key_subkey
    assert settings.log_level == "DEBUG"
    assert settings.database_pool_max == Settings().database_pool_max  # default kept


def test_settings_are_immutable() -> None:
    settings = load_settings(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"TRIBUNE_PORT": "eighty"}, "TRIBUNE_PORT"),
        ({"TRIBUNE_PORT": "70000"}, "port"),
        ({"TRIBUNE_DATABASE_URL": "mysql://x"}, "database_url"),
        ({"TRIBUNE_REDIS_URL": "http://x"}, "redis_url"),
        ({"TRIBUNE_JWT_SECRET": "short"}, "jwt_secret"),
        ({"TRIBUNE_PUBLIC_URL": "tribune.example.org/path"}, "public_url"),
        ({"TRIBUNE_HEALTH_INTERVAL": "0"}, "health_interval"),
        ({"TRIBUNE_PORTT": "1"}, "TRIBUNE_PORTT"),
        ({"TRIBUNE_JWT_PUBLIC_KEY": "/nonexistent.pem"}, "jwt_public_key"),
    ],
)
def test_bad_values_are_refused_naming_the_key(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(environ=environ)


def test_unknown_or_malformed_file_keys(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text("[database]\npool_maks = 3\n")
    with pytest.raises(SettingsError, match="database_pool_maks"):
        load_settings(config, environ={})
    config.write_text("port = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(config, environ={})
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})
    config.write_text('port = "8080"\n')
    assert load_settings(config, environ={}).port == 8080
    config.write_text("port = true\n")
    with pytest.raises(SettingsError, match="port must be a whole number"):
        load_settings(config, environ={})


def test_secrets_are_masked() -> None:
    settings = load_settings(
        environ={
            "TRIBUNE_JWT_SECRET": "s" * 40,
            "TRIBUNE_REDIS_URL": "redis://:hunter2hunter2@10.0.0.5:6379/0",
            "TRIBUNE_DATABASE_URL": "postgresql://tribune:pgpass@db:5432/tribune",
        }
    )
    shown = settings.masked()
    assert "s" * 40 not in str(shown) and shown["jwt_secret"] == "****"
    assert "hunter2" not in shown["redis_url"] and shown["redis_url"].endswith("@10.0.0.5:6379/0")
    assert "pgpass" not in shown["database_url"] and "tribune:****@db:5432" in shown["database_url"]
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_check_config_command_uses_the_same_loader(tmp_path: Path) -> None:
    tribune = Path(sys.executable).with_name("tribune")
    env = {"PATH": "/usr/bin:/bin", "TRIBUNE_JWT_SECRET": "k" * 40, "TRIBUNE_PORT": "8123"}
    ok = subprocess.run([tribune, "check-config"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "port = 8123" in ok.stdout and "jwt_secret = ****" in ok.stdout and "k" * 40 not in ok.stdout
    bad = subprocess.run(
        [tribune, "check-config"],
        env={**env, "TRIBUNE_DATABASE_POOL_MAX": "lots"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert "TRIBUNE_DATABASE_POOL_MAX must be a whole number" in bad.stderr


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for field in dataclasses.fields(Settings):
        assert f"`{field.name}`" in readme or f"`{field.name.rsplit('_', 1)[0]}_min` / `" in readme, (
            field.name
        )
