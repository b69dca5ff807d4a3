import json

import pytest

from sidlib import config
from sidlib.__main__ import main


def test_every_shipped_profile_loads():
    names = config.list_profiles()
    assert {"smoke", "ml100k", "scientific", "video-games"} <= set(names)
    for name in names:
        cfg = config.load(name)
        assert cfg.profile == name
        assert cfg.description


def test_smoke_extends_ml100k_and_changes_only_what_it_says():
    base, smoke = config.load("ml100k"), config.load("smoke")
    assert smoke.data.source == base.data.source == "movielens"
    assert smoke.data.max_users == 300 and base.data.max_users == 0
    assert smoke.data.kcore == base.data.kcore


def test_overrides_are_typed_and_checked():
    cfg = config.load("smoke", ["data.min_title_chars=20", "data.strict=true", "clean.context_fields=title,brand"])
    assert cfg.data.min_title_chars == 20 and cfg.data.strict is True
    assert cfg.clean.context_fields == ["title", "brand"]
    assert config.load("smoke", {"rqvae.hidden": [64, 32]}).rqvae.hidden == [64, 32]
    with pytest.raises(config.ConfigError, match="unknown key 'min_titel_chars'"):
        config.load("smoke", ["data.min_titel_chars=3"])
    with pytest.raises(config.ConfigError, match="expected int"):
        config.load("smoke", {"data.kcore": "five"})
    with pytest.raises(config.ConfigError, match="not of the form"):
        config.parse_overrides(["data.kcore"])
    with pytest.raises(config.ConfigError, match="unknown profile 'nope'"):
        config.load("nope")


def test_section_hash_changes_only_with_its_section():
    a = config.load("smoke")
    b = config.load("smoke", {"clean.max_title_chars": 50})
    assert a.section_hash("data") == b.section_hash("data")
    assert a.section_hash("clean") != b.section_hash("clean")


def test_cli_show_and_bad_override(capsys):
    assert main(["show", "--profile", "smoke", "--set", "data.kcore=3"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["kcore"] == 3
    assert main(["show", "--set", "data.bogus=1"]) == 2
    assert "unknown key 'bogus'" in capsys.readouterr().err
