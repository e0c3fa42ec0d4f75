"""The container image: ``make image`` builds it, ``make image-test`` also runs it.

One image serves every mediasearch service (``Dockerfile``; the command picks the service). Here
there is no Docker daemon and no registry, so the image is built with ``podman build --isolation
chroot`` from a base made locally with ``mmdebstrap`` (Debian bookworm, minbase, python3), and the
dependencies come from a wheelhouse downloaded on this machine from ``requirements/runtime.lock``
(the build cannot verify the package index's certificate; an air-gapped build works the same way).

``make image-test`` mounts the built image's filesystem (``podman mount``; ``podman run`` needs a
cgroup setup this machine lacks) and runs the Helm chart's wiring test
(:mod:`mediasearch.dev.chart_wiring`) with every workload's command entered into it with
``chroot --userspec=10001:10001``: migrations, pull-model, shard servers, gateway, indexer and
compactor from the image, as its non-root user, against PostgreSQL, moto and a local Triton on
loopback; an image put into the bucket must be found through the gateway. It ends with::

    image: mb=... build_s=... search_ok=1
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mediasearch.dev.layout import ROOT
from mediasearch.dev.lockfile import LOCKS, PYTHON_VERSION, TORCH_WHEELS, Lock, problems
from mediasearch.errors import ConfigError
from mediasearch.requestlog import configure_logging

log = logging.getLogger(__name__)
BASE = "localhost/debian:bookworm-py"
TAG = "localhost/mediasearch:dev"
USER = (10001, 10001)
WORK = ROOT / "build" / "image"
WHEELHOUSES = {"runtime": ROOT / "build" / "wheelhouse", "export": ROOT / "build" / "wheelhouse-export"}
# The wheels' platforms the image accepts: glibc 2.28 and older on x86_64 (bookworm has 2.36; the
# lock is compiled for manylinux_2_28); pip does not widen one --platform to the older tags.
PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
# What the service image must not contain (the export stage has torch on purpose).
FORBIDDEN = (
    "usr/bin/gcc",
    "usr/bin/cc",
    "usr/bin/make",
    "opt/mediasearch/lib/python3.11/site-packages/torch",
)


def _tools() -> None:
    missing = [tool for tool in ("podman", "mmdebstrap", "chroot") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} not found: `apt-get install podman mmdebstrap` (Debian) builds images "
            "without a Docker daemon"
        )


def podman(*args: str) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip()


def ensure_base(tag: str = BASE) -> None:
    """The base image (Debian bookworm minbase with python3 and venv), made once with mmdebstrap."""
    if subprocess.run(["podman", "image", "exists", tag]).returncode == 0:
        return
    WORK.mkdir(parents=True, exist_ok=True)
    tar = WORK / "base.tar"
    log.info("making the base image %s with mmdebstrap (about a minute, once)", tag)
    subprocess.run(
        ["mmdebstrap", "--quiet", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
         "bookworm", str(tar)],
        check=True,
    )  # fmt: skip
    podman("import", str(tar), tag)
    tar.unlink()


def wheelhouse(lock: Lock, folder: Path, find_links: Path | None = None) -> None:
    """Every wheel the lock pins (hashes checked) for the image's platform, whatever this machine
    is, and the project's own wheel, into ``folder``; ``find_links``: a folder of wheels the
    index lacks (torch's CPU build for the export image)."""
    stale = problems(lock)
    if stale:
        raise ConfigError("; ".join(stale))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("mediasearch-*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    log.info("downloading the wheels of %s into %s", lock.path.name, folder)
    subprocess.run(
        [*pip, "download", "--no-deps", "--only-binary=:all:", "--require-hashes", "-r", str(lock.path),
         *(a for platform in PLATFORMS for a in ("--platform", platform)), "--python-version", PYTHON_VERSION,
         "--implementation", "cp", "--abi", "cp311", "-d", str(folder),
         *(["--find-links", str(find_links)] if find_links else [])],
        check=True,
    )  # fmt: skip
    for staging in (ROOT / "build").glob("lib*"):  # setuptools' staging: a deleted module would linger
        shutil.rmtree(staging)
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(folder)], check=True
    )


def fill_wheelhouse(target: str = "runtime", torch_wheels: Path = TORCH_WHEELS) -> None:
    """The wheelhouse a ``target`` of the Dockerfile installs from (``make wheelhouse``)."""
    lock = {lock.name: lock for lock in LOCKS}[target]
    wheelhouse(lock, WHEELHOUSES[target], torch_wheels if lock.overrides else None)


def build(
    target: str = "runtime", tag: str = TAG, base: str = BASE, torch_wheels: Path = TORCH_WHEELS
) -> float:
    """Build ``target`` of the Dockerfile as ``tag``; returns the seconds it took (wheelhouse included)."""
    _tools()
    if base == BASE:
        ensure_base(base)
    started = time.monotonic()
    fill_wheelhouse(target, torch_wheels)
    log.info("podman build --target %s -t %s (base %s)", target, tag, base)
    done = subprocess.run(
        ["podman", "build", "--isolation", "chroot", "--build-arg", f"BASE_IMAGE={base}", "--target", target,
         "-t", tag, "-f", str(ROOT / "Dockerfile"), str(ROOT)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"podman build failed:\n{(done.stdout + done.stderr)[-5000:]}")
    subprocess.run(["podman", "image", "prune", "--force"], capture_output=True)  # the build stages
    return time.monotonic() - started


def size_mb(tag: str = TAG) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag)) / 1e6


@contextlib.contextmanager
def mounted(tag: str = TAG) -> Iterator[Path]:
    """The image's filesystem, writable (a container's layer), removed afterwards."""
    container = podman("create", tag)
    try:
        yield Path(podman("mount", container))
    finally:
        subprocess.run(["podman", "umount", container], capture_output=True)
        subprocess.run(["podman", "rm", "--force", container], capture_output=True)


def image_problems(root: Path, tag: str = TAG) -> list[str]:
    """What the service image must be: its user is 10001 and exists, no compiler, no torch."""
    out = [f"the image contains /{path}" for path in FORBIDDEN if (root / path).exists()]
    user = podman("image", "inspect", "--format", "{{.Config.User}}", tag)
    if user != f"{USER[0]}:{USER[1]}":
        out.append(f"the image runs as {user!r}, not {USER[0]}:{USER[1]}")
    if f":{USER[0]}:" not in (root / "etc" / "passwd").read_text():
        out.append(f"no user {USER[0]} in /etc/passwd")
    return out


def run_image_test(tag: str = TAG) -> None:
    """The chart's wiring test with every workload run from the image's filesystem."""
    from mediasearch.dev.chart_wiring import Runtime, run_wiring

    if os.geteuid() != 0:
        raise ConfigError("the image test enters the image's filesystem with chroot, which needs root")
    with mounted(tag) as root:
        found = image_problems(root, tag)
        if found:
            raise AssertionError("; ".join(found))
        run_wiring(Runtime(root, USER))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the mediasearch image (and --test it) with podman.")
    parser.add_argument(
        "--target", choices=sorted(WHEELHOUSES), default="runtime", help="the Dockerfile stage"
    )
    parser.add_argument("--tag", default=TAG, help=f"the image's name (default {TAG})")
    parser.add_argument(
        "--base", default=BASE, help=f"BASE_IMAGE (default {BASE}, made here with mmdebstrap)"
    )
    parser.add_argument("--test", action="store_true", help="run the chart's workloads from the built image")
    parser.add_argument(
        "--wheelhouse-only", action="store_true", help="only download the wheels (for a docker build)"
    )
    parser.add_argument(
        "--torch-wheels", type=Path, default=TORCH_WHEELS, help="a folder holding torch's CPU wheel (export)"
    )
    args = parser.parse_args(argv)
    configure_logging(logging.INFO)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    try:
        if args.wheelhouse_only:
            fill_wheelhouse(args.target, args.torch_wheels)
            return 0
        seconds = build(args.target, args.tag, args.base, args.torch_wheels)
    except (ConfigError, RuntimeError, subprocess.CalledProcessError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    summary = f"image: mb={size_mb(args.tag):.0f} build_s={seconds:.0f}"
    ok = True
    if args.test:
        try:
            run_image_test(args.tag)
        except Exception as exc:  # reported in the summary line
            sys.stderr.write(f"error: the image test failed: {type(exc).__name__}: {exc}\n")
            ok = False
        summary += f" search_ok={int(ok)}"
    sys.stdout.write(summary + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
