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


def test_a_profile_file_outside_the_package(tmp_path):
    """`--profile my/shop.toml`: a packaged base, paths relative to the file, its own name."""
    (tmp_path / "raw").mkdir()
    f = tmp_path / "conf" / "shop.toml"
    f.parent.mkdir()
    f.write_text('base = "smoke"\n[data]\npath = "../raw"\n[sids]\nimport_path = "idx.json"\n')
    cfg = config.load(str(f))
    assert (cfg.profile, cfg.profile_file) == ("shop", str(f.resolve()))
    assert cfg.data.path == str((tmp_path / "raw").resolve())  # relative to the file, not the cwd
    assert cfg.sids.import_path == str(f.parent / "idx.json")
    assert cfg.data.source == config.load("smoke").data.source  # the rest from its base
    assert config.load("smoke").profile_file == ""

    named = tmp_path / "other.toml"
    named.write_text(f'name = "shop-2"\nbase = "{f}"\n[data]\nkcore = 3\n')  # a file based on a file
    c2 = config.load(str(named))
    assert (c2.profile, c2.data.kcore, c2.data.path) == ("shop-2", 3, cfg.data.path)

    bad = tmp_path / "typo.toml"
    bad.write_text('base = "smoke"\n[data]\nkcor = 3\n')
    with pytest.raises(config.ConfigError, match="unknown key 'kcor'"):
        config.load(str(bad))
    with pytest.raises(config.ConfigError, match="profile file .*nowhere.toml"):
        config.load(str(tmp_path / "nowhere.toml"))
    spaced = tmp_path / "my shop.toml"
    spaced.write_text('base = "smoke"\n')
    with pytest.raises(config.ConfigError, match="name = "):
        config.load(str(spaced))
