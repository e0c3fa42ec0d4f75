"""Encoders under concurrent load, side by side in one run: naive vs LocalEncoder vs TritonEncoder.

    python -m bench.encoders            (make bench-encoders ARGS=...)

Exports a random ViT-B/32-shaped CLIP once (cached under build/bench/, shared with the other
benchmarks), starts a local Triton over it (or uses --triton-url), and runs three systems:

- naive: one ONNX Runtime session shared by all requests; each request (one query, unpadded; one
  image, decoded in the same task) runs alone in a thread pool (Python's default executor size).
  What a first serving layer without batching does.
- local: :class:`LocalEncoder` (asyncio micro-batcher, batches cut by token length).
- triton: :class:`TritonEncoder` through Triton's dynamic batcher (CPU flavour here; --flavour gpu on
  a GPU node with NVIDIA's tritonserver via --tritonserver/--backend-directory, or --triton-url).

Each scenario's time is split into interleaved rounds (naive, local, triton; then local, triton,
naive; ...) and the rounds are pooled, so a burst of outside load does not land on one system only.

Scenarios: text queries/s and p50/p99 at concurrency 1, 8, 32 (500 distinct queries of 3-30 tokens),
images/s at concurrency 8 (scikit-image's photos as JPEG, one image per request). The last line is the
summary that other tools parse.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench._queries import make_queries
from bench.models import BUILD, vitb32_repository
from mediasearch.dev.triton import LocalTriton, TritonOptions
from mediasearch.encoders import Encoder, LocalEncoder, TritonEncoder
from mediasearch.encoders.local import BatchingOptions
from mediasearch.encoders.triton import TritonClientOptions
from mediasearch.model_manifest import MANIFEST_SUFFIX, TOKENIZER_SUFFIX, ModelManifest
from mediasearch.preprocess import TextTokenizer, prepare_image

SYSTEMS = ("naive", "local", "triton")


@dataclass
class Result:
    count: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    @staticmethod
    def merge(parts: Sequence[Result]) -> Result:
        return Result(
            sum(p.count for p in parts),
            sum(p.seconds for p in parts),
            [x for p in parts for x in p.latencies_ms],
        )

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


class NaiveEncoder:
    """Per-request ONNX Runtime: no batching, no padding, one shared session per tower."""

    def __init__(self, repository: Path) -> None:
        import onnxruntime as ort

        self.manifest = ModelManifest.load(repository)
        m = self.manifest
        self.tokenizer = TextTokenizer.from_file(m.tokenizer_path(repository), m.context_length, m.pad_id)
        options = ort.SessionOptions()  # ONNX Runtime's defaults: every core for each run
        providers = [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()
        ]
        self.text = ort.InferenceSession(str(m.onnx_path(repository, m.text)), options, providers=providers)
        self.vision = ort.InferenceSession(
            str(m.onnx_path(repository, m.vision)), options, providers=providers
        )
        self.pool = ThreadPoolExecutor()  # the default executor's size: min(32, cpus + 4)

    async def encode_text(self, query: str) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._text, query)

    async def encode_image(self, data: bytes) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._image, data)

    def _text(self, query: str) -> np.ndarray:
        ids = np.asarray([self.tokenizer.encode(query)], dtype=np.int64)
        return self.text.run(None, {self.manifest.text.input.name: ids})[0][0]

    def _image(self, data: bytes) -> np.ndarray:
        pixels = prepare_image(data, self.manifest.image)[None]
        return self.vision.run(None, {self.manifest.vision.input.name: pixels})[0][0]


async def drive(
    fn: Callable[[Any], Awaitable[object]], items: Sequence[Any], concurrency: int, seconds: float
) -> Result:
    """``concurrency`` closed-loop clients calling ``fn`` on the next item until ``seconds`` pass."""
    source = itertools.cycle(items)
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await fn(next(source))
            latencies.append((time.perf_counter() - started) * 1e3)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return Result(len(latencies), time.perf_counter() - started, latencies)


def with_instances(repository: Path, build: Path, count: int) -> Path:
    """A copy of ``repository`` whose CPU configs ask for ``count`` instances per model.

    The weights and model.py are symlinks; only ``configs/cpu.pbtxt`` differs (and Triton's python
    backend runs each instance in its own process). Measures what the export should generate.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    manifest = ModelManifest.load(repository)
    copy = build / f"{repository.name}-cpu-x{count}"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    for name in (f"clip{MANIFEST_SUFFIX}", f"clip{TOKENIZER_SUFFIX}"):
        shutil.copy(repository / name, copy / name)
    for spec in (manifest.text, manifest.vision):
        src, dst = repository / spec.model, copy / spec.model
        (dst / "1").mkdir(parents=True)
        (dst / "configs").mkdir()
        for item in (src / "1").iterdir():
            (dst / "1" / item.name).symlink_to(item.resolve())
        shutil.copy(src / "config.pbtxt", dst / "config.pbtxt")
        config = text_format.Parse((src / "configs" / "cpu.pbtxt").read_text(), mc.ModelConfig())
        for group in config.instance_group:
            group.count = count
        (dst / "configs" / "cpu.pbtxt").write_text(text_format.MessageToString(config))
    return copy


def photos() -> list[bytes]:
    """scikit-image's sample photos as JPEG bytes (a few sizes, so decode costs vary like real uploads)."""
    from PIL import Image
    from skimage import data

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        img = Image.fromarray(getattr(data, name)())
        for scale in (1.0, 2.0):
            buf = io.BytesIO()
            img.resize((int(img.width * scale), int(img.height * scale))).save(buf, "JPEG", quality=90)
            out.append(buf.getvalue())
    return out


def scenarios(args: argparse.Namespace) -> list[tuple[str, str, int, float]]:
    s = args.seconds
    return [
        ("text", "c1", 1, 6 * s),
        ("text", "c8", 8, 10 * s),
        ("text", "c32", 32, 15 * s),
        ("image", "c8", 8, 15 * s),
    ]


async def run_all(
    args: argparse.Namespace, repository: Path, triton_url: str
) -> dict[tuple[str, str, str], Result]:
    queries, images = make_queries(500), photos()
    naive = NaiveEncoder(repository)
    batching = BatchingOptions.defaults(
        pass_cost_tokens=args.pass_cost, max_inflight=args.local_inflight, ort_threads=args.ort_threads
    )
    local = LocalEncoder(repository, batching=batching)
    triton = TritonEncoder(
        repository,
        options=TritonClientOptions.defaults(
            url=triton_url,
            text_bucket=args.bucket,
            pass_cost_tokens=args.pass_cost,
            client_batching=not args.no_client_batching,
            timeout_s=60,
        ),
    )
    encoders: list[Encoder] = [local, triton]
    for enc in encoders:
        await enc.start()
    text_fns: dict[str, Callable[[Any], Awaitable[object]]] = {
        "naive": naive.encode_text,
        "local": lambda q: local.encode_texts([q]),
        "triton": lambda q: triton.encode_texts([q]),
    }
    image_fns: dict[str, Callable[[Any], Awaitable[object]]] = {
        "naive": naive.encode_image,
        "local": lambda b: _one_image(local, b),
        "triton": lambda b: _one_image(triton, b),
    }
    results: dict[tuple[str, str, str], Result] = {}
    try:
        for system in SYSTEMS:  # warm-up: first runs allocate, JIT-select kernels, open connections
            await drive(text_fns[system], queries[:16], 8, 0.5)
            await drive(image_fns[system], images[:2], 2, 0.1)
        for kind, label, concurrency, seconds in scenarios(args):
            fns, items = (text_fns, queries) if kind == "text" else (image_fns, images)
            runs: dict[str, list[Result]] = {system: [] for system in SYSTEMS}
            for k in range(args.rounds):  # interleaved rounds, rotating who goes first
                for system in SYSTEMS[k % 3 :] + SYSTEMS[: k % 3]:
                    runs[system].append(await drive(fns[system], items, concurrency, seconds / args.rounds))
            for system in SYSTEMS:
                r = results[(kind, label, system)] = Result.merge(runs[system])
                unit = "queries/s" if kind == "text" else "images/s"
                print(
                    f"  {kind:5} {label:4} {system:6} {r.rate:7.1f} {unit:9}  p50 {r.pct(50):7.1f} ms"
                    f"  p99 {r.pct(99):7.1f} ms  (n={r.count})",
                    flush=True,
                )
    finally:
        for enc in encoders:
            await enc.close()
    return results


async def _one_image(encoder: Encoder, data: bytes) -> np.ndarray:
    return (await encoder.encode_images([data])).raise_first()[0]


def summary(results: dict[tuple[str, str, str], Result]) -> str:
    def rate(kind: str, label: str, system: str) -> float:
        return results[(kind, label, system)].rate

    p99 = {s: results[("text", "c32", s)].pct(99) for s in SYSTEMS}
    naive = rate("text", "c32", "naive")
    return (
        f"encoders: text_qps_c32_naive={naive:.1f} text_qps_c32_local={rate('text', 'c32', 'local'):.1f} "
        f"text_qps_c32_triton={rate('text', 'c32', 'triton'):.1f} "
        f"speedup_triton_vs_naive={rate('text', 'c32', 'triton') / naive:.2f} "
        f"text_p99_ms_c32_naive={p99['naive']:.0f} text_p99_ms_c32_triton={p99['triton']:.0f} "
        f"image_ips_c8_naive={rate('image', 'c8', 'naive'):.1f} "
        f"image_ips_c8_triton={rate('image', 'c8', 'triton'):.1f}"
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repository", type=Path, help="an exported model repository (default: ViT-B/32-shaped)")
    p.add_argument(
        "--flavour", default="cpu", help="Triton config flavour: cpu (python backend), gpu, tensorrt"
    )
    p.add_argument("--triton-url", help="use a running Triton (host:port) instead of starting one")
    p.add_argument("--tritonserver", type=Path, help="tritonserver binary (default: the nvidia-pytriton one)")
    p.add_argument("--backend-directory", type=Path, help="Triton backends (default: built for the binary)")
    p.add_argument(
        "--triton-ort-threads", type=int, default=0, help="ORT threads in the CPU model.py (0: all)"
    )
    p.add_argument("--ort-threads", type=int, default=0, help="ORT intra-op threads in-process (0: all)")
    p.add_argument(
        "--triton-instances",
        type=int,
        help="serve a copy of the model whose CPU configs ask for N instances (default: as exported)",
    )
    p.add_argument("--bucket", type=int, default=8, help="Triton text length bucket, tokens")
    p.add_argument("--pass-cost", type=int, default=64, help="text pass cost in token-rows (length splits)")
    p.add_argument("--local-inflight", type=int, default=2, help="LocalEncoder passes in flight per tower")
    p.add_argument("--no-client-batching", action="store_true", help="one Triton request per call")
    p.add_argument("--seconds", type=float, default=1.0, help="scale every scenario's duration")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds per scenario (a noisy neighbour hits all alike)",
    )
    return p.parse_args()


def main() -> int:
    args = parse_args()
    repository = args.repository or vitb32_repository()[0]
    print(f"model {repository}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True)
    if args.triton_url:
        results = asyncio.run(run_all(args, repository, args.triton_url))
    else:
        served = repository
        if args.triton_instances:
            served = with_instances(repository, BUILD, args.triton_instances)
        options = TritonOptions(
            served,
            flavour=args.flavour,
            ort_threads=args.triton_ort_threads,
            binary=args.tritonserver,
            backend_directory=args.backend_directory,
        )
        with LocalTriton(options) as server:
            print(f"tritonserver pid {server.pid} on {server.grpc_url} ({args.flavour} flavour)", flush=True)
            results = asyncio.run(run_all(args, repository, server.grpc_url))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(summary(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
