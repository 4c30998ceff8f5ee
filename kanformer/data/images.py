"""Image-classification data as tensors: scikit-learn's digits (8x8, for tests), Fashion-MNIST from the Debian package
``dataset-fashion-mnist`` (IDX files; official 60k / 10k split), or a Hugging Face image dataset (``hf:<name>``)."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import DataConfig

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]
IMAGE_SOURCES = ("digits", "fashion_mnist", "hf:<dataset>")


@dataclass
class ImageData:
    train_x: torch.Tensor  # (N, C, H, W) float32, normalised
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    labels: list[str]
    mean: float
    std: float

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]


def _read_idx(path: Path) -> torch.Tensor:
    """IDX format (LeCun et al.): magic (2 zero bytes, dtype 0x08 = ubyte, ndim), big-endian sizes, data."""
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8)
    return data.view(*dims)


def _fashion_mnist() -> tuple[torch.Tensor, ...]:
    root = Path(os.environ.get("KANFORMER_FASHION_MNIST", FASHION_MNIST_DIR))
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = []
    for name in names:
        found = [p for p in (root / f"{name}.gz", root / name) if p.exists()]
        if not found:
            raise FileNotFoundError(f"Fashion-MNIST file {name}(.gz) not found in {root}. Install the Debian package "
                                    f"(apt-get install dataset-fashion-mnist) or set KANFORMER_FASHION_MNIST")
        paths.append(found[0])
    tx, ty, vx, vy = (_read_idx(p) for p in paths)
    return tx.unsqueeze(1).float() / 255, ty.long(), vx.unsqueeze(1).float() / 255, vy.long()


def _digits(val_fraction: float, seed: int) -> tuple[torch.Tensor, ...]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("data.dataset=digits needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16  # (1797, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(val_fraction * len(y)))
    return x[order[n_val:]], y[order[n_val:]], x[order[:n_val]], y[order[:n_val]]


def _hf_images(spec: str, cfg: DataConfig) -> tuple[tuple[torch.Tensor, ...], list[str]]:
    import datasets
    import numpy as np

    name, _, config = spec.partition(":")
    ds = datasets.load_dataset(name, config or None)
    val_split = next((s for s in ("validation", "valid", "test") if s in ds), None)
    if "train" not in ds or val_split is None:
        raise ValueError(f"Image dataset {spec!r} needs a 'train' and a validation/test split (has {list(ds)})")

    def convert(split):
        imgs = [torch.tensor(np.asarray(im), dtype=torch.float32) / 255 for im in ds[split][cfg.image_field]]
        x = torch.stack([im.unsqueeze(0) if im.dim() == 2 else im.permute(2, 0, 1) for im in imgs])
        return x, torch.tensor(ds[split][cfg.label_field], dtype=torch.long)

    feature = ds["train"].features.get(cfg.label_field)
    labels = list(getattr(feature, "names", []) or [])
    return (*convert("train"), *convert(val_split)), labels


def load_images(cfg: DataConfig, image_size: int) -> ImageData:
    if cfg.dataset == "digits":
        tx, ty, vx, vy = _digits(cfg.val_fraction, cfg.split_seed)
        labels = [str(i) for i in range(10)]
    elif cfg.dataset == "fashion_mnist":
        tx, ty, vx, vy = _fashion_mnist()
        labels = FASHION_LABELS
    elif cfg.dataset.startswith("hf:"):
        (tx, ty, vx, vy), labels = _hf_images(cfg.dataset[3:], cfg)
    else:
        raise ValueError(f"Unknown image dataset {cfg.dataset!r}. Available: {', '.join(IMAGE_SOURCES)}")
    if len(tx) == 0 or len(vx) == 0:
        raise ValueError(f"Image dataset {cfg.dataset!r} has an empty train or validation split")
    if tx.shape[-1] != image_size or tx.shape[-2] != image_size:
        tx, vx = (F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False)
                  for t in (tx, vx))
    labels = labels or [str(i) for i in range(int(ty.max()) + 1)]
    mean, std = (tx.mean().item(), tx.std().item()) if cfg.normalize else (0.0, 1.0)
    return ImageData(train_x=(tx - mean) / std, train_y=ty, val_x=(vx - mean) / std, val_y=vy, labels=labels,
                     mean=mean, std=std)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel (zero padding) and horizontal flips, per image; ``(B, C, H, W)``."""
    b, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (b,), generator=generator)
    dx = torch.randint(0, 3, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w] for i in range(b)])
    return torch.where(flip[:, None, None, None], out.flip(-1), out)
