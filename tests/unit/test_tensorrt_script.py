"""export/tensorrt/build_plan.sh, run with a stand-in trtexec that records its arguments."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from mediasearch.model_manifest import ModelManifest

SCRIPT = Path(__file__).resolve().parents[2] / "export" / "tensorrt" / "build_plan.sh"


def test_build_plan_derives_shapes_from_manifest_and_writes_plans_atomically(
    tiny_repository: Path, tmp_path: Path
) -> None:
    repo = shutil.copytree(tiny_repository, tmp_path / "model_repository")
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "bin" / "trtexec"
    fake.parent.mkdir()
    fake.write_text(
        '#!/usr/bin/env bash\necho "$@" >> "$CALLS"\n'
        'for a in "$@"; do case $a in --saveEngine=*) echo plan > "${a#--saveEngine=}";; esac; done\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "CALLS": str(calls)}
    subprocess.run(["bash", str(SCRIPT), str(repo), "clip"], check=True, env=env, capture_output=True)
    m = ModelManifest.load(repo)
    text_call, vision_call = calls.read_text().splitlines()
    assert f"--maxShapes=input_ids:{m.text.max_batch_size}x{m.context_length}" in text_call
    assert "--fp16" in text_call and "--minShapes=input_ids:1x2" in text_call
    assert f"--maxShapes=pixels:{m.vision.max_batch_size}x32x32x3" in vision_call
    for spec in (m.text, m.vision):
        assert (repo / spec.model / "1" / "model.plan").read_text() == "plan\n"
        assert not (repo / spec.model / "1" / "model.plan.tmp").exists()


def test_build_plan_without_manifest_says_to_export_first(tmp_path: Path) -> None:
    out = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "run mediasearch export first" in out.stderr
