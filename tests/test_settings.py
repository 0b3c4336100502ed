"""Settings: every BIRDCLF_* variable parsed once, typed, and a bad value named clearly."""

from __future__ import annotations

import pytest

from birdclf.errors import SettingsError
from birdclf.settings import Settings, get_settings, parse_bool, parse_size, reset_settings


@pytest.mark.parametrize("text,value", [("20971520", 20971520), ("20MB", 20_000_000), ("20 MiB", 20 * 2**20),
                                        ("50M", 50_000_000), ("1.5G", 1_500_000_000), ("64kib", 65536)])
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["twenty", "-5", "20 megs", "", "1e6"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_bools():
    assert parse_bool("1") and parse_bool("Yes") and not parse_bool("0") and not parse_bool("off")
    with pytest.raises(ValueError):
        parse_bool("maybe")


def test_defaults_and_values_from_the_environment(tmp_path):
    env = {"BIRDCLF_HOME": str(tmp_path), "BIRDCLF_MAX_BYTES": "8MB", "BIRDCLF_MAX_IMAGES": "3",
           "BIRDCLF_ALLOW_PRIVATE_URLS": "true", "BIRDCLF_CORS_ORIGINS": "https://a.example/, https://b.example",
           "BIRDCLF_BIRD_THRESHOLD": "0.2", "BIRDCLF_API_URL": "https://fn.example/api/", "BIRDCLF_THREADS": ""}
    s = Settings.from_env(env)
    assert s.home == tmp_path and s.max_bytes == 8_000_000 and s.max_images == 3 and s.allow_private_urls
    assert s.cors_origins == ("https://a.example", "https://b.example") and s.bird_threshold == 0.2
    assert s.api_url == "https://fn.example/api" and s.threads is None  # empty means default
    assert Settings.from_env({}) == Settings(home=Settings().home)


def test_every_bad_value_is_named_at_once():
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"BIRDCLF_MAX_BYTES": "lots", "BIRDCLF_THREADS": "0", "BIRDCLF_URL_TIMEOUT": "-1",
                           "BIRDCLF_BIRD_THRESHOLD": "2", "BIRDCLF_LOG_LEVEL": "LOUD", "BIRDCLF_MAX_IMAGES": "1.5"})
    message = str(info.value)
    for name in ("BIRDCLF_MAX_BYTES='lots'", "BIRDCLF_THREADS", "BIRDCLF_URL_TIMEOUT", "BIRDCLF_BIRD_THRESHOLD",
                 "BIRDCLF_LOG_LEVEL", "BIRDCLF_MAX_IMAGES"):
        assert name in message


def test_parsed_once_until_reset(monkeypatch):
    monkeypatch.setenv("BIRDCLF_MAX_IMAGES", "5")
    assert get_settings().max_images == 5
    monkeypatch.setenv("BIRDCLF_MAX_IMAGES", "6")
    assert get_settings().max_images == 5  # parsed once per process
    reset_settings()
    assert get_settings().max_images == 6


def test_public_view_hides_secrets():
    s = Settings(api_key="k3y", model="https://store.example/m.onnx?sig=SECRET")
    public = s.public()
    assert public["api_key"] == "***" and "SECRET" not in public["model"]
    with pytest.raises(TypeError):
        s.with_(no_such_setting=1)


def test_a_copy_is_validated_like_the_environment():
    s = Settings.defaults().with_(max_bytes="1MiB", log_level="debug")
    assert s.max_bytes == 2**20 and s.log_level == "DEBUG"
    with pytest.raises(SettingsError, match="BIRDCLF_MAX_BYTES=-1"):
        s.with_(max_bytes=-1)


def test_defaults_ignore_the_environment(monkeypatch):
    monkeypatch.setenv("BIRDCLF_MAX_IMAGES", "lots")
    assert Settings.defaults().max_images == 16
    with pytest.raises(SettingsError, match="BIRDCLF_MAX_IMAGES='lots'"):
        Settings.from_env()


def test_pasted_values_are_trimmed_and_blank_ones_mean_the_default(monkeypatch):
    monkeypatch.setenv("BIRDCLF_API_KEY", "k3y\n")
    monkeypatch.setenv("BIRDCLF_MAX_IMAGES", " 5 ")
    monkeypatch.setenv("BIRDCLF_THREADS", "   ")
    s = Settings.from_env()
    assert (s.api_key, s.max_images, s.threads) == ("k3y", 5, None)
