"""Image and audio encoder throughput, and a no-change re-materialization against a full one.

Prints:
* images/s of the default image encoder (packaged EfficientNet-Lite0, decode + preprocess + forward, batched
  through the DataLoader) on MovieLens posters (``--posters``, default ``../shared/data/movielens-posters``) or,
  without them, on generated JPEGs of poster size;
* audio clips/s of the librosa encoder (and torchcrepe ``tiny`` with ``--crepe``) on the FSDD sample WAVs plus
  generated 3 s clips;
* ``sync_media_embeddings`` wall time for a full materialization of ``--images`` items into a fresh DuckDB file
  and for a second run over the unchanged files (hashing only, nothing encoded).

Run: ``nice -n 10 .venv/bin/python benchmarks/encoders.py [--images 512] [--clips 120] [--threads 2] [--crepe]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _poster_files(posters: Path, n: int, scratch: Path) -> tuple[list[Path], str]:
    if posters.is_dir():
        files = sorted(posters.glob("*.jpg"), key=lambda p: p.name)[:n]
        if files:
            return files, f"{len(files)} MovieLens posters"
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        path = scratch / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (444, 300, 3), dtype=np.uint8)).save(path, quality=85)
        files.append(path)
    return files, f"{n} generated 300x444 JPEGs (posters not found)"


def _audio_files(n: int, scratch: Path) -> tuple[list[Path], str]:
    import soundfile as sf

    fsdd = sorted((ROOT.parent / "shared" / "data" / "fsdd-sample").glob("*.wav"))
    fsdd = fsdd or sorted((ROOT / "tests" / "data" / "fsdd").glob("*.wav"))
    rng = np.random.default_rng(0)
    files = list(fsdd[: n // 2])
    for i in range(n - len(files)):
        path = scratch / f"clip{i}.wav"
        t = np.arange(3 * 22050) / 22050
        y = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.02 * rng.standard_normal(len(t))
        sf.write(path, y.astype(np.float32), 22050)
        files.append(path)
    return (
        files,
        f"{len(fsdd[: n // 2])} FSDD WAVs (8 kHz, ~0.4 s) + {n - len(fsdd[: n // 2])} generated 3 s clips (22.05 kHz)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posters", default=str(ROOT.parent / "shared" / "data" / "movielens-posters"))
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--clips", type=int, default=120)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--crepe", action="store_true", help="also time the torchcrepe tiny embedding")
    args = parser.parse_args()

    import torch

    from recsys_pipeline.content.audio import AudioEncoder
    from recsys_pipeline.content.image import ImageEncoder
    from recsys_pipeline.content.media import MediaLocator, sync_media_embeddings
    from recsys_pipeline.data import warehouse

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}, CPU cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as tmp:
        scratch = Path(tmp)
        images, what = _poster_files(Path(args.posters), args.images, scratch)
        started = time.perf_counter()
        image_encoder = ImageEncoder(cache_dir=scratch / "models")
        print(f"\nimage encoder {image_encoder.model_id} loaded in {time.perf_counter() - started:.1f} s")
        image_encoder.encode_files(images[:8])  # warm-up
        started = time.perf_counter()
        out = image_encoder.encode_files(images)
        seconds = time.perf_counter() - started
        print(
            f"images: {what}: {len(out.positions)} embedded, {len(out.failures)} failed, {seconds:.1f} s, "
            f"{len(images) / seconds:.1f} images/s (batch {image_encoder.batch_size})"
        )

        clips, what = _audio_files(args.clips, scratch)
        kinds = ["librosa"] + (["crepe"] if args.crepe else [])
        for kind in kinds:
            encoder = AudioEncoder(kind)
            encoder.encode_files(clips[:2])  # warm-up (librosa/numba first-call cost)
            started = time.perf_counter()
            out = encoder.encode_files(clips)
            seconds = time.perf_counter() - started
            print(
                f"audio ({encoder.model_id}, {encoder.dim}-d): {what}: {len(out.positions)} embedded, "
                f"{seconds:.1f} s, {len(clips) / seconds:.1f} clips/s"
            )

        # full vs. no-change materialization of image_embeddings over the same files
        root = images[0].parent
        ids = [p.stem for p in images]
        locator = MediaLocator([root], "{item_id}.jpg")
        with warehouse.session(scratch / "bench.duckdb") as con:
            timings = []
            for label in ("full", "no change"):
                started = time.perf_counter()
                report = sync_media_embeddings(
                    con, "image", "image_embeddings", image_encoder, ids, [None] * len(ids), locator
                )
                seconds = time.perf_counter() - started
                timings.append(seconds)
                print(
                    f"image_embeddings {label}: {seconds:.2f} s for {len(ids)} items "
                    f"(decoded {report.decoded}, encoded {report.encoded}, reused {report.reused})"
                )
        print(
            f"no-change re-materialization costs {timings[1] / timings[0]:.1%} of a full one "
            f"({timings[1] / len(ids) * 1000:.2f} ms per item: read + SHA-256 + lookup)"
        )


if __name__ == "__main__":
    main()
