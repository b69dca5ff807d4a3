from sidlib.baselines import _fresh_checkpoints


def test_checkpoints_of_other_settings_are_not_resumed(tmp_path):
    folder = tmp_path / "ckpt_sasrec"
    _fresh_checkpoints(folder, {"cfg": {"hidden": 64}, "data": "a"})
    (folder / "last.pt").write_bytes(b"x")
    _fresh_checkpoints(folder, {"cfg": {"hidden": 64}, "data": "a"})  # same run: kept for resume
    assert (folder / "last.pt").exists()
    _fresh_checkpoints(folder, {"cfg": {"hidden": 32}, "data": "a"})  # other settings: cleared
    assert not (folder / "last.pt").exists()
    (folder / "last.pt").write_bytes(b"x")
    _fresh_checkpoints(folder, {"cfg": {"hidden": 32}, "data": "b"})  # other data: cleared
    assert not (folder / "last.pt").exists()
