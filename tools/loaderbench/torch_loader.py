"""Times PyTorch's DataLoader with VICReg's training transforms.

Usage: python3 torch_loader.py --data DIR [--batch 64] [--workers N] [--batches 10]

The transforms are VICReg's augmentations.py TrainTransform (two views:
RandomResizedCrop(224, BICUBIC), flip, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8,
grayscale p 0.2, GaussianBlur p 1.0 / 0.1, Solarization p 0 / 0.2, ToTensor,
Normalize) over torchvision's ImageFolder, loaded as main_vicreg.py does
(shuffled, drop_last; no pin_memory, as there is no GPU here). The counterpart
of `go run ./tools/loaderbench`.
"""
import argparse
import os
import time

import numpy as np
import torch
import torchvision.datasets as datasets
import torchvision.transforms as transforms
from PIL import ImageFilter, ImageOps
from torchvision.transforms import InterpolationMode


class GaussianBlur(object):
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        if np.random.rand() < self.p:
            sigma = np.random.rand() * 1.9 + 0.1
            return img.filter(ImageFilter.GaussianBlur(sigma))
        return img


class Solarization(object):
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        if np.random.rand() < self.p:
            return ImageOps.solarize(img)
        return img


def view(blur_p, solarize_p):
    return transforms.Compose([
        transforms.RandomResizedCrop(224, interpolation=InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.RandomApply(
            [transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)],
            p=0.8,
        ),
        transforms.RandomGrayscale(p=0.2),
        GaussianBlur(p=blur_p),
        Solarization(p=solarize_p),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])


class TrainTransform(object):
    def __init__(self):
        self.transform = view(1.0, 0.0)
        self.transform_prime = view(0.1, 0.2)

    def __call__(self, sample):
        return self.transform(sample), self.transform_prime(sample)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--batches", type=int, default=10)
    args = ap.parse_args()
    ds = datasets.ImageFolder(args.data, TrainTransform())
    loader = torch.utils.data.DataLoader(
        ds, batch_size=args.batch, num_workers=args.workers, shuffle=True, drop_last=True
    )
    start = time.perf_counter()
    first = None
    n = 0
    for (x1, x2), _ in loader:
        n += 1
        if n == 1:
            first = time.perf_counter()
        if n >= args.batches:
            break
    end = time.perf_counter()
    if n < 2:
        raise SystemExit("only %d batches: need at least 2 to time" % n)
    cores = max(1, min(args.workers, os.cpu_count()))
    total = n * args.batch / (end - start)
    steady = (n - 1) * args.batch / (end - first)
    print("torch DataLoader: vicreg views, %d images, batch %d, %d batches, %d workers on %d CPUs"
          % (len(ds), args.batch, n, args.workers, os.cpu_count()))
    print("  all batches: %.1f images/s (%.1f images/s per core)" % (total, total / cores))
    print("  after the first: %.1f images/s (%.1f images/s per core)" % (steady, steady / cores))


if __name__ == "__main__":
    main()
