"""``mediasearch export``: CLIP checkpoint -> ONNX towers -> Triton model repository."""

from __future__ import annotations

import argparse

from mediasearch.errors import ConfigError
from mediasearch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a CLIP checkpoint to ONNX and publish it into a Triton model repository",
        description=(
            "Export CLIP's text and vision towers to ONNX, check them against PyTorch (refusing to "
            "publish above a max abs diff of 1e-4), and publish them atomically with their Triton "
            "configs (GPU, TensorRT, local CPU and onnxruntime-on-CPU flavours), the tokenizer and "
            "the model manifest. "
            "Needs the export extra (torch, transformers): `pip install -e '.[export]'`."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help="a local checkpoint directory (config.json, weights, tokenizer) or a Hugging Face id "
        "already in the local cache, e.g. openai/clip-vit-base-patch32",
    )
    p.add_argument("--out", help="model repository folder (MEDIASEARCH_MODEL_REPOSITORY, model_repository)")
    p.add_argument(
        "--name", help="model name prefix: <name>_text, <name>_vision (MEDIASEARCH_MODEL_NAME, clip)"
    )
    p.add_argument(
        "--dali",
        action="store_true",
        help="also publish the GPU-decode flavour: <name>_preprocess_dali (an NVIDIA DALI pipeline that "
        "decodes, resizes and crops encoded images on the GPU) and the <name>_vision_bytes ensemble "
        "(bytes in, embedding out). Only NVIDIA's Triton image on a GPU node serves them; the local "
        "`mediasearch triton` cannot (docs/models.md)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import importlib.util

    from mediasearch.export import export_model

    missing = [m for m in ("torch", "transformers", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"mediasearch export needs {', '.join(missing)} (the export extra): "
            "`pip install 'mediasearch[export]'`, or run it in the export image (`make image-export`)"
        )
    settings = settings.with_overrides(model_repository=args.out, model_name=args.name)
    report = export_model(args.model, settings.model_repository, settings.model_name, dali=args.dali)
    m = report.manifest
    print(
        f"exported {m.source}\n"
        f"  version          {m.version}\n"
        f"  embedding dim    {m.embedding_dim}, context {m.context_length} tokens, image {m.image.crop}px\n"
        f"  parity vs torch  text {report.parity.text_max_abs_diff:.2e}, vision "
        f"{report.parity.vision_max_abs_diff:.2e}, padding {report.parity.padding_max_abs_diff:.2e}\n"
        f"  onnx sizes       text {report.text_onnx_bytes / 1e6:.1f} MB, "
        f"vision {report.vision_onnx_bytes / 1e6:.1f} MB\n"
        f"  published to     {settings.model_repository}/ in {report.seconds:.1f}s"
    )
    if m.vision_bytes is not None:
        print(
            f"  GPU decode       {m.vision_bytes.model} (DALI + {m.vision.model}): serve it with NVIDIA's "
            f"Triton image on a GPU; encoders use it with MEDIASEARCH_TRITON_IMAGE_BYTES=true"
        )
    return 0
