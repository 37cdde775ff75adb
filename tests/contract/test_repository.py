"""contract.repository: which versions and models a repository holds, by Triton's layout."""

from __future__ import annotations

from contract.repository import complete_versions, legacy_models, model_names, numeric_versions, version_dirs


def test_only_versions_with_metadata_are_complete(tmp_path):
    for version in ("1", "2", "3"):
        (tmp_path / "digits" / version).mkdir(parents=True)
    (tmp_path / "digits" / "1" / "metadata.json").write_text("{}")
    (tmp_path / "digits" / "3" / "metadata.json").write_text("{}")
    (tmp_path / "digits" / "0").mkdir()  # Triton versions are positive
    (tmp_path / "digits" / ".scratch").mkdir()
    (tmp_path / "digits_encoder" / "2").mkdir(parents=True)  # graphs alone are not a model
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metadata.json").write_text("{}")
    assert numeric_versions(tmp_path / "digits") == [1, 2, 3]
    assert complete_versions(tmp_path, "digits") == [1, 3]
    assert model_names(tmp_path) == ["digits"] and legacy_models(tmp_path) == ["old"]
    assert model_names(tmp_path / "missing") == [] and complete_versions(tmp_path, "nope") == []
    assert [p.relative_to(tmp_path).as_posix() for p in version_dirs(tmp_path, "digits", 3)] == \
        ["digits/3", "digits_encoder/3", "digits_head/3"]
