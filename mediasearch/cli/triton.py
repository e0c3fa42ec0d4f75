"""``mediasearch triton``: serve the model repository with a local Triton Inference Server."""

from __future__ import annotations

import argparse
from pathlib import Path

from mediasearch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "triton",
        help="run a local Triton Inference Server over the model repository until Ctrl-C",
        description=(
            "Start the tritonserver shipped in the nvidia-pytriton wheel (python backend) over the model "
            "repository in the CPU flavour, on loopback ports; wait until every model is ready, print "
            "the addresses, and stop cleanly on Ctrl-C or SIGTERM. Defaults come from MEDIASEARCH_* "
            "settings. Production runs NVIDIA's Triton container instead (GPU flavour)."
        ),
    )
    p.add_argument("--repository", type=Path, help="model repository (default: MEDIASEARCH_MODEL_REPOSITORY)")
    p.add_argument("--name", help="model name prefix (default: MEDIASEARCH_MODEL_NAME)")
    p.add_argument("--flavour", choices=("cpu", "gpu", "tensorrt"), help="config flavour (default: cpu)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--http-port", type=int, help="HTTP port (default: MEDIASEARCH_TRITON_HTTP_PORT, 8000)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default: MEDIASEARCH_TRITON_GRPC_PORT, 8001)")
    p.add_argument("--metrics-port", type=int, help="metrics port (default: MEDIASEARCH_TRITON_METRICS_PORT)")
    p.add_argument("--ort-threads", type=int, help="ONNX Runtime threads per CPU model instance (0: all)")
    p.add_argument("--tritonserver", type=Path, help="another tritonserver binary (default: the wheel's)")
    p.add_argument("--backend-directory", type=Path, help="backends for --tritonserver")
    p.add_argument("--log-file", type=Path, help="keep tritonserver's log in this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mediasearch.dev.triton import LocalTriton, TritonOptions, serve_triton

    settings = settings.with_overrides(
        model_repository=args.repository,
        model_name=args.name,
        triton_flavour=args.flavour,
        triton_http_port=args.http_port,
        triton_grpc_port=args.grpc_port,
        triton_metrics_port=args.metrics_port,
        triton_ort_threads=args.ort_threads,
    )
    options = TritonOptions(
        repository=settings.model_repository,
        name=settings.model_name,
        flavour=settings.triton_flavour,
        host=args.host,
        http_port=settings.triton_http_port,
        grpc_port=settings.triton_grpc_port,
        metrics_port=settings.triton_metrics_port,
        ort_threads=settings.triton_ort_threads,
        binary=args.tritonserver,
        backend_directory=args.backend_directory,
        log_file=args.log_file,
        tls_cert=settings.internal_tls_cert,  # MEDIASEARCH_INTERNAL_TLS_CERT/KEY: gRPC over TLS
        tls_key=settings.internal_tls_key,
    )

    def ready(server: LocalTriton) -> None:
        m = server.manifest
        assert m is not None
        print(
            f"tritonserver (pid {server.pid}) serves {m.text.model} and {m.vision.model} "
            f"({m.version}, {options.flavour} flavour) from {options.repository}\n"
            f"  grpc     {server.grpc_url}\n"
            f"  http     {server.http_url}\n"
            f"  metrics  {server.metrics_url}\n"
            f"  log      {server.log_path}\n"
            "Ctrl-C stops it.",
            flush=True,
        )

    serve_triton(options, on_ready=ready)
    return 0
