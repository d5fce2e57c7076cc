"""Oracle outputs for loader's augmentation tests (color_test.go,
blur_test.go, augment_test.go). Run with Debian's /usr/bin/python3 (PIL 9.4,
torch 1.13, torchvision 0.14, numpy). Nothing it writes is committed: the
tests run it through internal/oracle's cache.

  ops OUT DIR     for every image in DIR (converted to RGB) and a generated
                  71x53 photo: the input bytes as OUT/<image>.rgb and, for
                  every op in OPS, torchvision.transforms.functional's
                  result on the PIL image as OUT/<image>.<op>.rgb; shapes in
                  OUT/manifest.json {file: [h, w, 3]}. Ops torchvision
                  refuses for an image (a blur kernel wider than it) are
                  left out. Also F.resized_crop for RESIZED_CROPS,
                  bilinear (<op>) and bicubic (<op>bicubic).
  rrc OUT         RandomResizedCrop.get_params over 20000 draws (seed 0) for
                  each case of RRC_CASES: (i, j, h, w) as little-endian int32
                  rows in OUT/rrc.<case>.i32
"""
import json
import os
import sys

import numpy as np

# name -> (function name, argument); must match color_test.go / blur_test.go.
OPS = {
    "hflip": ("hflip", None),
    "gray": ("to_grayscale", 3),
    "bright0": ("adjust_brightness", 0.0),
    "bright0.6": ("adjust_brightness", 0.6),
    "bright1.37": ("adjust_brightness", 1.37),
    "contrast0": ("adjust_contrast", 0.0),
    "contrast0.6": ("adjust_contrast", 0.6),
    "contrast1.4": ("adjust_contrast", 1.4),
    "sat0": ("adjust_saturation", 0.0),
    "sat0.8": ("adjust_saturation", 0.8),
    "sat1.2": ("adjust_saturation", 1.2),
    "hue0.1": ("adjust_hue", 0.1),
    "hue-0.1": ("adjust_hue", -0.1),
    "hue0.0371": ("adjust_hue", 0.0371),
    "hue-0.0371": ("adjust_hue", -0.0371),
    "hue0.5": ("adjust_hue", 0.5),
    "hue-0.5": ("adjust_hue", -0.5),
    "solarize128": ("solarize", 128),
    "tvblur0.1": ("gaussian_blur", 0.1),
    "tvblur1.0": ("gaussian_blur", 1.0),
    "tvblur1.93": ("gaussian_blur", 1.93),
    "pilblur0.1": ("pil_blur", 0.1),
    "pilblur0.5": ("pil_blur", 0.5),
    "pilblur1.0": ("pil_blur", 1.0),
    "pilblur1.7": ("pil_blur", 1.7),
    "pilblur2.0": ("pil_blur", 2.0),
}

# name -> output (width, height) of F.resized_crop (bilinear) of the box
# top=h//5, left=w//6, height=h//2, width=w//2: an upscale, a slight and a
# strong downscale. Must match augment_test.go.
RESIZED_CROPS = {
    "rc40x32": (40, 32),
    "rc16x16": (16, 16),
    "rc8x6": (8, 6),
}

# name -> (width, height, scale, ratio)
RRC_CASES = {
    "wide": (500, 375, (0.08, 1.0), (3 / 4, 4 / 3)),
    "tall": (60, 400, (0.08, 1.0), (3 / 4, 4 / 3)),
    "swav": (320, 240, (0.05, 0.14), (3 / 4, 4 / 3)),
}


def ops(out, src):
    import torch
    from PIL import Image, ImageFilter
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_preprocess import photo

    torch.set_num_threads(1)
    images = {}
    for name in sorted(os.listdir(src)):
        with open(os.path.join(src, name), "rb") as f:
            images[name] = Image.open(f).convert("RGB")
    images["generated"] = Image.fromarray(photo(71, 53, 21), "RGB")
    # Real photos where scikit-learn is installed (tools/setup.sh installs
    # it): china.jpg and flower.jpg, 640 x 427, decoded by PIL.
    try:
        from sklearn.datasets import load_sample_images
        sample = load_sample_images()
        for fname, arr in zip(sample.filenames, sample.images):
            images["photo-" + os.path.basename(fname)] = Image.fromarray(arr, "RGB")
    except ImportError:
        pass
    manifest = {}

    def save(fname, img):
        arr = np.asarray(img, dtype=np.uint8)
        assert arr.ndim == 3 and arr.shape[2] == 3, (fname, arr.shape)
        arr.tofile(os.path.join(out, fname))
        manifest[fname] = list(arr.shape)

    for name, img in images.items():
        save(name + ".rgb", img)
        for op, (fn, arg) in OPS.items():
            if fn == "hflip":
                res = F.hflip(img)
            elif fn == "gaussian_blur":
                if min(img.size) <= 11:
                    continue
                res = F.gaussian_blur(img, [23, 23], [arg, arg])
            elif fn == "pil_blur":
                res = img.filter(ImageFilter.GaussianBlur(arg))
            else:
                res = getattr(F, fn)(img, arg)
            save(f"{name}.{op}.rgb", res)
        w, h = img.size
        for op, (ow, oh) in RESIZED_CROPS.items():
            res = F.resized_crop(img, h // 5, w // 6, h // 2, w // 2, [oh, ow])
            save(f"{name}.{op}.rgb", res)
            res = F.resized_crop(img, h // 5, w // 6, h // 2, w // 2, [oh, ow], interpolation=InterpolationMode.BICUBIC)
            save(f"{name}.{op}bicubic.rgb", res)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def rrc(out):
    import torch
    from torchvision import transforms

    torch.set_num_threads(1)
    for name, (w, h, scale, ratio) in RRC_CASES.items():
        torch.manual_seed(0)
        img = torch.zeros(1, h, w)
        rows = [transforms.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(20000)]
        np.asarray(rows, dtype="<i4").tofile(os.path.join(out, f"rrc.{name}.i32"))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ops":
        ops(*args)
    elif cmd == "rrc":
        rrc(*args)
    else:
        sys.exit(f"unknown command {cmd}")
