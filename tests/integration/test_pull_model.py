"""`mediasearch pull-model`: what a service's init container copies from the model repository in S3."""

from __future__ import annotations

from pathlib import Path

import pytest

from mediasearch.cli import main
from mediasearch.dev.emulated_aws import NotifyingBucket
from mediasearch.errors import NotFound
from mediasearch.model_manifest import ModelManifest, pull_model_files


@pytest.mark.usefixtures("aws_env")
def test_pull_model_copies_the_manifest_and_tokenizer_from_s3(
    endpoint: str, tiny_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = NotifyingBucket.create(endpoint, "models", notify=False)
    for path in tiny_repository.glob("clip.*.json"):
        bucket.put(f"prod/repo/{path.name}", path.read_bytes())
    out = tmp_path / "models"
    argv = ["pull-model", "s3://models/prod/repo", "--out", str(out)]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEDIASEARCH_S3_ENDPOINT_URL", endpoint)
        assert main(argv) == 0
    want = ModelManifest.load(tiny_repository, "clip")
    assert ModelManifest.load(out, "clip") == want
    assert (out / "clip.tokenizer.json").read_bytes() == (
        tiny_repository / "clip.tokenizer.json"
    ).read_bytes()
    assert want.version in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["clip.manifest.json", "clip.tokenizer.json"]


@pytest.mark.usefixtures("aws_env")
def test_pull_model_says_what_is_missing(endpoint: str, tmp_path: Path) -> None:
    NotifyingBucket.create(endpoint, "empty", notify=False)
    with pytest.raises(NotFound, match="s3://empty/repo/clip"):
        pull_model_files("s3://empty/repo", "clip", tmp_path / "m", endpoint_url=endpoint)
    assert not (tmp_path / "m" / "clip.manifest.json").exists()


def test_pull_model_from_a_folder(tiny_repository: Path, tmp_path: Path) -> None:
    manifest = pull_model_files(str(tiny_repository), "clip", tmp_path / "m")
    assert manifest == ModelManifest.load(tiny_repository, "clip")
