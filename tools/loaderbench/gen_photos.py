"""Writes a folder of JPEG "photos" for loaderbench.

Usage: python3 gen_photos.py OUT_DIR [N] [CLASSES]
       python3 gen_photos.py --real OUT_DIR [N] [CLASSES]

With --real the images are random 500x375 crops (half of them mirrored) of
scikit-learn's two sample photographs (china.jpg, flower.jpg; 640x427;
Debian's python3-sklearn), saved at JPEG quality 90: real photographic
content, though only two scenes.

Each image is 500x375 (ImageNet's typical size), a smooth random colour
field (a coarse random grid upsampled bicubically) plus finer-scale texture
and a little noise, saved at JPEG quality 90 into OUT_DIR/class_k/, so that
decoding and augmenting cost about what they cost on photographs. These are
not real photos: timings on them stand in for ImageNet's.
"""
import os
import sys

import numpy as np
from PIL import Image


def real(out, n, classes):
    from sklearn.datasets import load_sample_images
    imgs = load_sample_images().images
    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(os.path.join(out, "class_%d" % c), exist_ok=True)
    for i in range(n):
        a = imgs[i % len(imgs)]
        top = rng.integers(0, a.shape[0] - 375 + 1)
        left = rng.integers(0, a.shape[1] - 500 + 1)
        im = Image.fromarray(a[top:top + 375, left:left + 500])
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        im.save(os.path.join(out, "class_%d" % (i % classes), "img%05d.jpg" % i), quality=90)


def main():
    if sys.argv[1] == "--real":
        args = sys.argv[2:]
        real(args[0], int(args[1]) if len(args) > 1 else 768, int(args[2]) if len(args) > 2 else 8)
        return
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 768
    classes = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(os.path.join(out, "class_%d" % c), exist_ok=True)
    for i in range(n):
        field = np.zeros((375, 500, 3), np.float32)
        for cells, amp in ((4, 90.0), (12, 40.0), (40, 15.0)):
            grid = rng.uniform(-amp, amp, (cells * 3 // 4 + 1, cells + 1, 3)).astype(np.float32)
            for ch in range(3):
                up = Image.fromarray(grid[:, :, ch], mode="F").resize((500, 375), Image.BICUBIC)
                field[:, :, ch] += np.asarray(up)
        field += 128 + rng.normal(0, 4, field.shape).astype(np.float32)
        img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "RGB")
        img.save(os.path.join(out, "class_%d" % (i % classes), "img_%05d.jpg" % i), quality=90)


if __name__ == "__main__":
    main()
