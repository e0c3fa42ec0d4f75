"""How far reduced decoding is from the exact path, in pixels and in embeddings, and how much faster.

    python -m bench.decode_fidelity          (make bench-decode ARGS=...)

Reduced decoding (the default, :mod:`mediasearch.preprocess.image`) decodes a large JPEG at 1/2, 1/4
or 1/8 scale (DCT scaling), box-reduces any format by an integer factor, never below twice the
resize target, then resizes bicubically as CLIP's reference does. The exact path
(``MEDIASEARCH_IMAGE_DECODE_EXACT``) decodes at full size. Images whose short side is under
4 x 224 take the exact path either way, so only larger ones are compared:

- scikit-image's sample photos (astronaut, chelsea, coffee, rocket, the Hubble deep field,
  immunohistochemistry, retina), upscaled to 4000 x 3000 and saved as JPEG (quality 95) and PNG;
- the realistic corpus of ``make bench-ingest`` (:mod:`mediasearch.dev.photo_corpus`): its 12 Mpx
  phone JPEGs (some with an EXIF orientation), 1-4 Mpx JPEGs, PNG screenshots and WebP.

For each image: the largest and mean absolute difference of the vision tower's uint8 input (in
1/255 steps), the cosine between the two inputs' embeddings with the offline micro CLIP and with the
ViT-B/32-shaped CLIP (random weights: production's shapes), and the time of each path on one core.
The last line is the summary:
``decode_fidelity: images=... max_px_diff=... mean_px_diff=... cos_micro_min=... cos_vitb32_min=...
speedup_12mp_p50=...``
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.models import BUILD, vitb32_repository
from mediasearch.dev import photo_corpus
from mediasearch.model_manifest import ModelManifest
from mediasearch.preprocess.image import prepare_image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def skimage_photos() -> dict[str, bytes]:
    from skimage import data as sk

    out = {}
    for name in PHOTOS:
        img = Image.fromarray(np.asarray(getattr(sk, name)())[..., :3]).resize(
            (4000, 3000), Image.Resampling.BICUBIC
        )
        for fmt, ext in (("JPEG", "jpg"), ("PNG", "png")):
            buf = io.BytesIO()
            img.save(buf, fmt, quality=95)
            out[f"skimage/{name}.{ext}"] = buf.getvalue()
    return out


def micro_repository() -> Path:
    from mediasearch.export import export_model
    from mediasearch.export.micro import MODEL_DIR

    repo = BUILD / "micro_repository"
    if not ModelManifest.path_in(repo, "clip").is_file():
        export_model(str(MODEL_DIR), repo, "clip")
    return repo


async def embeddings(repository: Path, pixels: np.ndarray) -> np.ndarray:
    from mediasearch.encoders import LocalEncoder

    async with LocalEncoder(repository) as enc:
        out = [await enc.encode_pixels(pixels[i : i + 16]) for i in range(0, len(pixels), 16)]
    return np.concatenate(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--corpus-images", type=int, default=241, help="the corpus of make bench-ingest (its size)"
    )
    args = p.parse_args()
    BUILD.mkdir(parents=True, exist_ok=True)
    vitb32, _ = vitb32_repository()
    micro = micro_repository()
    cases = skimage_photos()
    kinds = {name: "skimage" for name in cases}
    for data, item in photo_corpus.corpus(args.corpus_images, BUILD):
        if min(item.width, item.height) >= 4 * 224:
            cases[item.name], kinds[item.name] = data, item.kind
    print(f"{len(cases)} images of at least 896 px on the short side: "
          + ", ".join(f"{k} {sum(v == k for v in kinds.values())}" for k in sorted(set(kinds.values()))),
          flush=True)  # fmt: skip

    results = {}
    for repo_name, repo in (("micro", micro), ("vitb32", vitb32)):
        spec = ModelManifest.load(repo).image
        fast, exact, t_fast, t_exact = [], [], [], []
        for data in cases.values():
            t = time.perf_counter()
            fast.append(prepare_image(data, spec))
            t_fast.append(time.perf_counter() - t)
            t = time.perf_counter()
            exact.append(prepare_image(data, spec, exact=True))
            t_exact.append(time.perf_counter() - t)
        a, b = np.stack(fast), np.stack(exact)
        ea, eb = asyncio.run(embeddings(repo, a)), asyncio.run(embeddings(repo, b))
        cos = np.sum(ea * eb, axis=1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1)
        results[repo_name] = (diff, cos, np.array(t_fast) * 1000, np.array(t_exact) * 1000)
        print(f"{repo_name} ({spec.resize} px resize, {spec.crop} crop): cosine min {cos.min():.5f} "
              f"mean {cos.mean():.5f}", flush=True)  # fmt: skip

    diff, _, t_fast, t_exact = results["vitb32"]
    names = list(cases)
    for kind in sorted(set(kinds.values())):
        idx = [i for i, n in enumerate(names) if kinds[n] == kind]
        d = diff[idx]
        print(f"  {kind:15s} {len(idx):3d} images: max diff {d.max():2d}/255, mean {d.mean():.3f}/255; "
              f"cosine micro min {results['micro'][1][idx].min():.5f}, vitb32 min "
              f"{results['vitb32'][1][idx].min():.5f}; p50 {np.median(t_fast[idx]):.0f} ms reduced, "
              f"{np.median(t_exact[idx]):.0f} ms exact", flush=True)  # fmt: skip
    phone = [i for i, n in enumerate(names) if kinds[n] == "phone-jpeg"] or list(range(len(names)))
    speedup = float(np.median(t_exact[phone]) / np.median(t_fast[phone]))
    print(
        f"decode_fidelity: images={len(cases)} max_px_diff={int(diff.max())} mean_px_diff={diff.mean():.3f} "
        f"cos_micro_min={results['micro'][1].min():.5f} cos_vitb32_min={results['vitb32'][1].min():.5f} "
        f"speedup_12mp_p50={speedup:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
