"""Labelled images for the objectives: the bundled digits, Fashion-MNIST, IDX files, an .npz,
or a folder of class folders.

Images are kept as uint8 NHWC arrays at their stored size and turned into float NCHW batches
at the search's image size when used, so a dataset loads once in the driver and travels to
every worker through Ray's object store (a path on the driver need not exist on the workers).
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from archdsl.search.errors import option_error

BUNDLED = "digits (UCI handwritten digits, 1,797 8x8 images, 10 classes; bundled)"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"  # Debian's package of the four IDX files
FASHION_MNIST_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageData:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    classes: list[str]
    source: str
    # indices of a dataset's official test split (IDX datasets): never drawn for a search's
    # validation, used only by `train_test()` for final evaluations
    test: np.ndarray | None = None

    def __post_init__(self):
        # exact mean and std from the histogram of the uint8 pixels, without a float copy
        counts = np.bincount(self.images.reshape(-1), minlength=256).astype(np.float64)
        values = np.arange(256) / 255.0
        self.mean = float((counts * values).sum() / counts.sum())
        self.std = max(float(np.sqrt((counts * (values - self.mean) ** 2).sum() / counts.sum())), 1e-6)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, seed: int = 0, validation: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
        """A fixed stratified split of the training images: (train indices, validation indices)."""
        rng = np.random.default_rng(seed)
        train, val = [], []
        training = np.ones(len(self.labels), dtype=bool)
        if self.test is not None:
            training[self.test] = False
        for label in range(self.num_classes):
            index = np.flatnonzero((self.labels == label) & training)
            rng.shuffle(index)
            cut = max(1, int(round(len(index) * validation))) if len(index) > 1 else 0
            val.extend(index[:cut])
            train.extend(index[cut:])
        return np.array(sorted(train)), np.array(sorted(val))

    def with_training_images(self, count: int, seed: int = 0) -> ImageData:
        """A copy holding `count` of the training images, the same number of each class (fixed by
        `seed`), and every image of the official test split: a search and final stage a CPU can
        afford, scored on the same test images."""
        training = np.ones(len(self.labels), dtype=bool)
        if self.test is not None:
            training[self.test] = False
        per_class = count // self.num_classes
        available = int(training.sum())
        if per_class < 2 or count > available:
            raise option_error(
                "--train-images",
                count,
                f"give between {2 * self.num_classes} (2 of each of the {self.num_classes} classes) and the "
                f"{available} training images of {self.source}",
            )
        rng = np.random.default_rng(seed)
        chosen = []
        for label in range(self.num_classes):
            index = np.flatnonzero((self.labels == label) & training)
            chosen.extend(rng.choice(index, size=min(len(index), per_class), replace=False))
        kept = np.sort(np.array(chosen))
        test = np.sort(self.test) if self.test is not None else np.array([], dtype=np.int64)
        index = np.concatenate([kept, test])
        return ImageData(
            self.images[index],
            self.labels[index],
            self.classes,
            f"{self.source} ({len(kept)} training images)",
            test=np.arange(len(kept), len(index)) if self.test is not None else None,
        )

    def train_test(self) -> tuple[np.ndarray, np.ndarray]:
        """The official (train indices, test indices); a dataset without one is split 80/20 once."""
        if self.test is None:
            return self.split(0)
        training = np.ones(len(self.labels), dtype=bool)
        training[self.test] = False
        return np.flatnonzero(training), np.sort(self.test)

    def batch(self, index: np.ndarray, size: tuple[int, int], channels: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Images `index` as a normalised float batch [B, channels, *size] and their labels.

        Grey images given to a network with more input channels are repeated on every channel
        (Fashion-MNIST as CIFAR-style RGB); colour images to a 1-channel network are averaged."""
        images = torch.from_numpy(self.images[index]).to(device).permute(0, 3, 1, 2).float() / 255.0
        images = (images - self.mean) / self.std
        if tuple(images.shape[-2:]) != tuple(size):
            images = F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False)
        if images.shape[1] != channels:
            images = images.mean(1, keepdim=True).expand(-1, channels, -1, -1).contiguous()  # grey: a repeat
        return images, torch.from_numpy(self.labels[index]).to(device)


def _bundled() -> ImageData:
    with resources.files("archdsl.search").joinpath("data/digits.npz").open("rb") as handle:
        stored = np.load(handle)
        return ImageData(stored["images"], stored["labels"].astype(np.int64), [str(d) for d in range(10)], BUNDLED)


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (`.gz` or plain), the format of MNIST and Fashion-MNIST: a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise option_error("--dataset", path, f"cannot read this IDX file: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise option_error(
            "--dataset", path, "not an IDX file of unsigned bytes (it must start with 00 00 08 and the number of dimensions)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * axis : 8 + 4 * axis], "big") for axis in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise option_error(
            "--dataset",
            path,
            f"the IDX header declares {'x'.join(map(str, shape))} = "
            f"{int(np.prod(shape))} bytes of data, but the file holds {len(raw) - header}",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    raise option_error(
        "--dataset",
        folder,
        f"an IDX dataset folder holds the four files {', '.join(IDX_FILES.values())} (each plain or .gz); {stem} is missing",
    )


def _idx(folder: Path, classes: list[str] | None = None, source: str | None = None) -> ImageData:
    """A folder of the four MNIST-style IDX files, keeping the official train/test split."""
    arrays = {key: read_idx(_idx_file(folder, stem)) for key, stem in IDX_FILES.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise option_error(
                "--dataset",
                folder,
                f"the {part} IDX files disagree: images {images.shape}, labels "
                f"{labels.shape} (expected [N, H, W] images and N labels)",
            )
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise option_error(
            "--dataset",
            folder,
            f"train images are {arrays['train_images'].shape[1:]} but test images {arrays['test_images'].shape[1:]}",
        )
    images = np.concatenate([arrays["train_images"], arrays["test_images"]])[..., None]
    labels = np.concatenate([arrays["train_labels"], arrays["test_labels"]]).astype(np.int64)
    count = int(labels.max()) + 1
    classes = classes if classes is not None and len(classes) == count else [str(c) for c in range(count)]
    test = np.arange(len(arrays["train_labels"]), len(labels))
    return ImageData(images, labels, classes, source or f"IDX files in {folder}", test)


def fashion_mnist_folder() -> Path:
    """Where Debian's `dataset-fashion-mnist` put its IDX files, asked of dpkg."""
    if shutil.which("dpkg") is not None:
        listing = subprocess.run(["dpkg", "-L", FASHION_MNIST_PACKAGE], capture_output=True, text=True).stdout
        for line in listing.splitlines():
            if line.endswith(f"{IDX_FILES['train_images']}.gz") or line.endswith(IDX_FILES["train_images"]):
                return Path(line).parent
    raise option_error(
        "--dataset",
        "fashion-mnist",
        f"Fashion-MNIST is not installed: `apt-get install "
        f"{FASHION_MNIST_PACKAGE}` (Debian/Ubuntu), or give a folder holding "
        f"its four IDX files",
    )


def _fashion_mnist() -> ImageData:
    return _idx(
        fashion_mnist_folder(),
        FASHION_MNIST_CLASSES,
        "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; 70,000 28x28 grey images, 10 classes, MIT; official split)",
    )


def _npz(path: Path) -> ImageData:
    try:
        stored = np.load(path)
    except Exception as error:  # noqa: BLE001  (numpy raises several kinds for a bad file)
        raise option_error("--dataset", path, f"cannot read this .npz: {error}") from None
    image_key = next((k for k in ("images", "x", "X", "data") if k in stored), None)
    label_key = next((k for k in ("labels", "y", "Y", "targets") if k in stored), None)
    if image_key is None or label_key is None:
        raise option_error(
            "--dataset",
            path,
            f"an .npz dataset holds `images` [N, H, W(, C)] and `labels` [N]; this one has "
            f"{', '.join(stored.files) or 'nothing'}",
        )
    images, labels = np.asarray(stored[image_key]), np.asarray(stored[label_key]).reshape(-1)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or len(images) != len(labels) or len(images) == 0:
        raise option_error(
            "--dataset",
            path,
            f"`{image_key}` must be [N, H, W] or [N, H, W, C] with N = len(`{label_key}`); "
            f"found {images.shape} and {labels.shape}",
        )
    if images.dtype != np.uint8:
        low, high = float(images.min()), float(images.max())
        images = np.round((images - low) / max(high - low, 1e-12) * 255).astype(np.uint8)
    classes, labels = np.unique(labels, return_inverse=True)
    return ImageData(images, labels.astype(np.int64), [str(c) for c in classes], str(path))


def _folders(path: Path, img_size: tuple[int, int]) -> ImageData:
    from PIL import Image

    classes = sorted(entry.name for entry in path.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise option_error(
            "--dataset",
            path,
            "a dataset directory holds one folder per class with images in each "
            "(like torchvision's ImageFolder); this one has no folders",
        )
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
        raise option_error(
            "--dataset",
            path,
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders "
            f"{', '.join(classes[:5])}{'...' if len(classes) > 5 else ''}",
        )
    return ImageData(np.stack(images), np.array(labels, dtype=np.int64), classes, str(path))


def load_dataset(path: str | Path | None, img_size: tuple[int, int] = (224, 224)) -> ImageData:
    """None or `digits`: the bundled digits; `fashion-mnist`: Debian's package; a folder of the four
    IDX files; an .npz (`images`, `labels`); or a directory of class folders."""
    if path is None or str(path) == "digits":
        return _bundled()
    if str(path) == "fashion-mnist":
        return _fashion_mnist()
    path = Path(path).expanduser()
    if not path.exists():
        raise option_error(
            "--dataset",
            path,
            "no such file or directory; give `fashion-mnist`, a folder of IDX files, a "
            "directory of class folders, an .npz with `images` and `labels`, or leave "
            "--dataset out for the bundled digits",
        )
    if path.is_dir():
        if any(path.glob(f"{IDX_FILES['train_images']}*")):
            return _idx(path)
        return _folders(path, img_size)
    if path.suffix == ".npz":
        return _npz(path)
    raise option_error("--dataset", path, "a dataset is a directory of class folders or an .npz file")
