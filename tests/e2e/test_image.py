"""The container image (make image-test): built with podman from the committed lock file, then the
Helm chart's workloads run from its filesystem as its non-root user, and a search finds an image
put into the bucket. Needs podman, mmdebstrap and root (.ci/run installs the first two)."""

from __future__ import annotations

import os
import shutil

import pytest

from mediasearch.dev import image

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("podman", "mmdebstrap")) or os.geteuid() != 0,
    reason="needs podman and mmdebstrap (apt-get install podman mmdebstrap) and root for chroot",
)


def test_the_image_builds_and_runs_every_workload_of_the_chart_as_its_user() -> None:
    image.build()
    assert image.size_mb() < 1500, "the service image grew past 1.5 GB"
    image.run_image_test()  # raises with the failing workload's log
