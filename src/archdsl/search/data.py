"""Labelled images for the objectives: the bundled digits, an .npz, or a folder of class folders.

Images are kept as uint8 NHWC arrays at their stored size and turned into float NCHW batches
at the search's image size when used, so a dataset loads once in the driver and travels to
every worker through Ray's object store (a path on the driver need not exist on the workers).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from archdsl.search.errors import option_error

BUNDLED = "digits (UCI handwritten digits, 1,797 8x8 images, 10 classes; bundled)"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageData:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    classes: list[str]
    source: str

    def __post_init__(self):
        pixels = self.images.astype(np.float32) / 255.0
        self.mean, self.std = float(pixels.mean()), max(float(pixels.std()), 1e-6)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, seed: int = 0, validation: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
        """A fixed stratified split: (train indices, validation indices)."""
        rng = np.random.default_rng(seed)
        train, val = [], []
        for label in range(self.num_classes):
            index = np.flatnonzero(self.labels == label)
            rng.shuffle(index)
            cut = max(1, int(round(len(index) * validation))) if len(index) > 1 else 0
            val.extend(index[:cut])
            train.extend(index[cut:])
        return np.array(sorted(train)), np.array(sorted(val))

    def batch(self, index: np.ndarray, size: tuple[int, int], channels: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Images `index` as a normalised float batch [B, channels, *size] and their labels."""
        images = torch.from_numpy(self.images[index]).to(device).permute(0, 3, 1, 2).float() / 255.0
        images = (images - self.mean) / self.std
        if tuple(images.shape[-2:]) != tuple(size):
            images = F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False)
        if images.shape[1] != channels:
            images = images.mean(1, keepdim=True).expand(-1, channels, -1, -1).contiguous()
        return images, torch.from_numpy(self.labels[index]).to(device)


def _bundled() -> ImageData:
    with resources.files("archdsl.search").joinpath("data/digits.npz").open("rb") as handle:
        stored = np.load(handle)
        return ImageData(stored["images"], stored["labels"].astype(np.int64), [str(d) for d in range(10)], BUNDLED)


def _npz(path: Path) -> ImageData:
    try:
        stored = np.load(path)
    except Exception as error:  # noqa: BLE001  (numpy raises several kinds for a bad file)
        raise option_error("--dataset", path, f"cannot read this .npz: {error}") from None
    image_key = next((k for k in ("images", "x", "X", "data") if k in stored), None)
    label_key = next((k for k in ("labels", "y", "Y", "targets") if k in stored), None)
    if image_key is None or label_key is None:
        raise option_error("--dataset", path, f"an .npz dataset holds `images` [N, H, W(, C)] and `labels` [N]; this one has "
                                              f"{', '.join(stored.files) or 'nothing'}")
    images, labels = np.asarray(stored[image_key]), np.asarray(stored[label_key]).reshape(-1)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or len(images) != len(labels) or len(images) == 0:
        raise option_error("--dataset", path, f"`{image_key}` must be [N, H, W] or [N, H, W, C] with N = len(`{label_key}`); "
                                              f"found {images.shape} and {labels.shape}")
    if images.dtype != np.uint8:
        low, high = float(images.min()), float(images.max())
        images = np.round((images - low) / max(high - low, 1e-12) * 255).astype(np.uint8)
    classes, labels = np.unique(labels, return_inverse=True)
    return ImageData(images, labels.astype(np.int64), [str(c) for c in classes], str(path))


def _folders(path: Path, img_size: tuple[int, int]) -> ImageData:
    from PIL import Image

    classes = sorted(entry.name for entry in path.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise option_error("--dataset", path, "a dataset directory holds one folder per class with images in each "
                                              "(like torchvision's ImageFolder); this one has no folders")
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((path / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(file) as image:
                image = image.convert("RGB").resize((img_size[1], img_size[0]), Image.BILINEAR)
                images.append(np.asarray(image, dtype=np.uint8))
            labels.append(label)
    if not images:
        raise option_error("--dataset", path, f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders "
                                              f"{', '.join(classes[:5])}{'...' if len(classes) > 5 else ''}")
    return ImageData(np.stack(images), np.array(labels, dtype=np.int64), classes, str(path))


def load_dataset(path: str | Path | None, img_size: tuple[int, int] = (224, 224)) -> ImageData:
    """None: the bundled digits; an .npz (`images`, `labels`); or a directory of class folders."""
    if path is None or str(path) == "digits":
        return _bundled()
    path = Path(path).expanduser()
    if not path.exists():
        raise option_error("--dataset", path, "no such file or directory; give a directory of class folders, an .npz with "
                                              "`images` and `labels`, or leave --dataset out for the bundled digits")
    if path.is_dir():
        return _folders(path, img_size)
    if path.suffix == ".npz":
        return _npz(path)
    raise option_error("--dataset", path, "a dataset is a directory of class folders or an .npz file")
