"""Export of a seeded tiny random CLIP through the public path (a checkpoint folder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mediasearch.errors import ModelUnavailable, NotClipModel, ParityError
from mediasearch.export import export_model, towers
from mediasearch.export.publish import sha256_file
from mediasearch.export.triton_config import Flavour, parse
from mediasearch.model_manifest import VERSION_PARAMETER, ModelManifest
from mediasearch.preprocess import TextTokenizer


@pytest.fixture(scope="module")
def manifest(tiny_repository: Path) -> ModelManifest:
    return ModelManifest.load(tiny_repository, "clip")


def test_export_publishes_models_tokenizer_and_manifest(
    tiny_repository: Path, manifest: ModelManifest
) -> None:
    names = sorted(p.name for p in tiny_repository.iterdir())
    assert names == ["clip.manifest.json", "clip.tokenizer.json", "clip_text", "clip_vision"]
    assert manifest.embedding_dim == 16 and manifest.context_length == 77 and manifest.image.crop == 32
    assert manifest.version.startswith("clip-")
    for rel, digest in manifest.files.items():
        assert sha256_file(tiny_repository / rel) == digest


def test_every_generated_config_parses_with_triton_schema_and_agrees(
    tiny_repository: Path, manifest: ModelManifest
) -> None:
    for spec in (manifest.text, manifest.vision):
        configs = {f: parse((tiny_repository / spec.model / f.filename).read_text()) for f in Flavour}
        for flavour, cfg in configs.items():
            assert cfg.name == spec.model
            assert cfg.max_batch_size == spec.max_batch_size
            assert [(i.name, list(i.dims)) for i in cfg.input] == [
                (t.name, list(t.dims)) for t in spec.inputs
            ]
            assert [(o.name, list(o.dims)) for o in cfg.output] == [
                (t.name, list(t.dims)) for t in spec.outputs
            ]
            assert list(cfg.dynamic_batching.preferred_batch_size) == list(spec.preferred_batch_sizes)
            assert cfg.parameters[VERSION_PARAMETER].string_value == manifest.version, flavour
        assert configs[Flavour.GPU].backend == "onnxruntime"
        assert configs[Flavour.CPU].backend == "python"
        assert configs[Flavour.TENSORRT].platform == "tensorrt_plan"
        onnx_cpu = configs[Flavour.ONNX_CPU]
        assert onnx_cpu.backend == "onnxruntime" and onnx_cpu.default_model_filename == "model.onnx"
        assert [g.kind for g in onnx_cpu.instance_group] == [onnx_cpu.instance_group[0].KIND_CPU]
        assert (tiny_repository / spec.model / "1" / "model.py").is_file()


def test_text_graph_output_normalised_and_padding_invariant(
    tiny_repository: Path, manifest: ModelManifest
) -> None:
    tok = TextTokenizer.from_file(
        manifest.tokenizer_path(tiny_repository), manifest.context_length, manifest.pad_id
    )
    sess = ort.InferenceSession(str(manifest.onnx_path(tiny_repository, manifest.text)))
    texts = ["a cat", "yellow flowers on a wooden table in the sun", "x"]
    batch = sess.run(None, {"input_ids": tok.encode_batch(texts)})[0]
    assert batch.shape == (3, 16) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    for i, text in enumerate(texts):
        alone = sess.run(None, {"input_ids": tok.encode_batch([text])})[0][0]
        assert float(np.abs(alone - batch[i]).max()) < 1e-6


def test_vision_graph_takes_uint8_nhwc(tiny_repository: Path, manifest: ModelManifest) -> None:
    sess = ort.InferenceSession(str(manifest.onnx_path(tiny_repository, manifest.vision)))
    (inp,) = sess.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [32, 32, 3]
    out = sess.run(None, {"pixels": np.zeros((2, 32, 32, 3), dtype=np.uint8)})[0]
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_export_reports_parity_and_version_is_a_content_hash(
    tiny_checkpoint: Path, tmp_path: Path, manifest: ModelManifest
) -> None:
    report = export_model(str(tiny_checkpoint), tmp_path / "again", "clip")
    assert report.parity.worst <= towers.PARITY_TOLERANCE
    assert report.manifest.version == manifest.version  # same weights, same version


def test_failed_parity_gate_publishes_nothing_and_keeps_previous_export(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "model_repository"
    export_model(str(tiny_checkpoint), repo, "clip")
    before = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    strict = towers.check_parity

    def zero_tolerance(*args: object, **kwargs: object) -> towers.ParityReport:
        return strict(*args, **{**kwargs, "tolerance": 0.0})  # type: ignore[arg-type]

    monkeypatch.setattr(towers, "check_parity", zero_tolerance)
    with pytest.raises(ParityError, match="nothing was published"):
        export_model(str(tiny_checkpoint), repo, "clip")
    after = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before  # no staging folder left, no file touched


def test_checkpoint_that_is_not_clip_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(NotClipModel, match="'bert' checkpoint, not CLIP"):
        export_model(str(tmp_path), tmp_path / "out", "clip")
    assert not (tmp_path / "out").exists()


def test_hub_id_unavailable_offline_explains_how_to_export() -> None:
    with pytest.raises(ModelUnavailable, match="machine with access to the Hugging Face hub") as err:
        export_model("openai/clip-vit-base-patch32", "/nonexistent/never-written", "clip")
    assert "--model ./clip" in str(err.value)


def test_missing_local_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="not a directory"):
        export_model(str(tmp_path / "nope"), tmp_path / "out", "clip")
