"""Fixtures and oracle outputs for loader's image tests (image_test.go,
imagefolder_test.go, fashionmnist_test.go). Run with Debian's /usr/bin/python3
(PIL 9.4, torch 1.13, torchvision 0.14, numpy).

  make-images DIR          writes the small committed test images into DIR
                           (loader/testdata/images); deterministic
  preprocess OUT DIR       for every image in DIR and every transform in
                           CONFIGS: torchvision's output as raw little-endian
                           float32 OUT/<image>.<config>.f32, PIL's
                           convert("RGB") bytes as OUT/<image>.rgb, and
                           OUT/manifest.json {file: shape}
  preprocess-photos OUT    the same for scikit-learn's two sample photos
                           (china.jpg, flower.jpg, as PIL decoded them: their
                           RGB bytes as OUT/photo-<name>.rgb) and the
                           ImageNet evaluation transform (Resize 256,
                           CenterCrop 224) and PHOTO_CONFIGS
  imagefolder OUT ROOT     torchvision.datasets.ImageFolder(ROOT): classes and
                           samples (paths relative to ROOT) as OUT/folder.json
  fashion-mnist OUT DIR    reads DIR's gzipped IDX files with gzip + numpy
                           (not through torchvision or Go) and writes counts,
                           first labels and SHA-256 digests to OUT/fmnist.json
"""
import hashlib
import io
import json
import os
import struct
import sys
import zlib

import numpy as np

# name -> (Resize, CenterCrop); 0 skips the step. Sizes chosen so that the
# test images are downscaled (with antialiasing) and upscaled, and centre
# crops land on half-pixel offsets, where Python rounds halves to even.
CONFIGS = {
    "none": (0, 0),
    "r16": (16, 0),
    "r7": (7, 0),
    "r48": (48, 0),
    "r20c16": (20, 16),
    "c16": (0, 16),
    "c11": (0, 11),
}


def photo(w, h, seed):
    """A small photo-like RGB image: smooth colour waves, sharp coloured
    shapes (where chroma subsampling matters) and noise."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack(
        [
            128 + 90 * np.sin(xx / 5.0 + yy / 7.0 + seed),
            128 + 90 * np.cos(xx / 3.0 - yy / 4.0),
            255 * xx / w * (yy / h),
        ],
        axis=-1,
    )
    img[h // 4 : h // 2, w // 3 : 2 * w // 3] = (230, 20, 40)
    img[h // 2 :, : w // 4] = (20, 40, 220)
    img[(xx - yy) ** 2 < 6] = (250, 240, 30)
    img += rng.normal(0, 12, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png16(path, arr, color_type):
    """Writes a 16-bit PNG (PIL cannot): arr is uint16 HxWxC, color_type 2
    (RGB) or 6 (RGBA)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))


def gif_image_descriptor(data):
    """Returns the offset of the first image descriptor of a GIF."""
    pos = 13
    if data[10] & 0x80:
        pos += 3 << ((data[10] & 7) + 1)
    while data[pos] == 0x21:
        pos += 2
        while data[pos]:
            pos += 1 + data[pos]
        pos += 1
    assert data[pos] == 0x2C
    return pos


def make_images(out):
    from PIL import Image

    os.makedirs(out, exist_ok=True)
    rng = np.random.RandomState(7)

    Image.fromarray(photo(37, 29, 1), "RGB").save(os.path.join(out, "rgb.png"))
    Image.fromarray(photo(31, 23, 2)[:, :, 1], "L").save(os.path.join(out, "grey.png"))

    # Palette with a transparent entry: convert("RGB") must show its colour.
    pal = rng.randint(0, 256, (40, 3)).astype(np.uint8)
    idx = (photo(27, 33, 3).astype(np.int32).sum(axis=-1) // 19 % 40).astype(np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(pal.flatten().tolist())
    im.save(os.path.join(out, "palette.png"), transparency=5)

    # Straight alpha, including fully transparent pixels with colour.
    rgba = np.concatenate([photo(30, 26, 4), rng.randint(0, 256, (26, 30, 1)).astype(np.uint8)], axis=-1)
    rgba[::3, ::4, 3] = 0
    Image.fromarray(rgba, "RGBA").save(os.path.join(out, "rgba.png"))

    la = np.stack([photo(21, 17, 5)[:, :, 0], rng.randint(0, 256, (17, 21)).astype(np.uint8)], axis=-1)
    Image.fromarray(la, "LA").save(os.path.join(out, "la.png"))

    # 16-bit grey opens as mode I; convert("RGB") clips it at 255.
    g16 = (photo(25, 19, 6)[:, :, 0].astype(np.int32) * 4).astype(np.uint16)
    Image.fromarray(g16, "I;16").save(os.path.join(out, "grey16.png"))

    # 16-bit colour: PIL keeps the high byte.
    write_png16(os.path.join(out, "rgba16.png"), rng.randint(0, 65536, (11, 13, 4)).astype(np.uint16), 6)
    write_png16(os.path.join(out, "rgb16.png"), rng.randint(0, 65536, (12, 17, 3)).astype(np.uint16), 2)

    # JPEGs: odd sizes, the three chroma subsamplings PIL writes, a
    # progressive one, grey and Adobe CMYK.
    Image.fromarray(photo(41, 31, 8), "RGB").save(os.path.join(out, "photo420.jpg"), quality=90, subsampling=2)
    Image.fromarray(photo(39, 27, 9), "RGB").save(os.path.join(out, "photo422.jpg"), quality=90, subsampling=1)
    Image.fromarray(photo(35, 25, 10), "RGB").save(os.path.join(out, "photo444.jpg"), quality=90, subsampling=0, progressive=True)
    Image.fromarray(photo(29, 21, 11)[:, :, 2], "L").save(os.path.join(out, "grey.jpg"), quality=90)
    Image.fromarray(photo(23, 19, 12), "RGB").convert("CMYK").save(os.path.join(out, "cmyk.jpg"), quality=90)

    # GIF whose first frame (15x10 at 3,5) does not cover its 22x18 screen,
    # with a transparent index that has a real colour.
    gpal = rng.randint(0, 256, (16, 3)).astype(np.uint8)
    gpal[5] = (200, 100, 50)
    gidx = (photo(15, 10, 13)[:, :, 0] // 16).astype(np.uint8)
    gim = Image.fromarray(gidx, "P")
    gim.putpalette(gpal.flatten().tolist())
    buf = io.BytesIO()
    gim.save(buf, "GIF", transparency=5)
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", 22, 18)
    d = gif_image_descriptor(data)
    data[d + 1 : d + 5] = struct.pack("<HH", 3, 5)
    with open(os.path.join(out, "frame.gif"), "wb") as f:
        f.write(data)


def preprocess(out, src):
    import torch
    from PIL import Image
    from torchvision import transforms

    torch.set_num_threads(1)
    manifest = {}
    for name in sorted(os.listdir(src)):
        with open(os.path.join(src, name), "rb") as f:
            img = Image.open(f)
            img = img.convert("RGB")
        rgb = np.asarray(img, dtype=np.uint8)
        rgb.tofile(os.path.join(out, name + ".rgb"))
        manifest[name + ".rgb"] = list(rgb.shape)
        for cname, (resize, crop) in CONFIGS.items():
            steps = []
            if resize:
                steps.append(transforms.Resize(resize))
            if crop:
                steps.append(transforms.CenterCrop(crop))
            steps += [transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
            x = transforms.Compose(steps)(img)
            fname = f"{name}.{cname}.f32"
            x.numpy().astype("<f4").tofile(os.path.join(out, fname))
            manifest[fname] = list(x.shape)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f)


# The real photos are 640x427: these downscale them by about 2.7x and 4.6x
# (antialiased) and centre-crop at odd and even sizes.
PHOTO_CONFIGS = {
    "r256c224": (256, 224),
    "r93c91": (93, 91),
}


def preprocess_photos(out):
    import torch
    from PIL import Image
    from sklearn.datasets import load_sample_images
    from torchvision import transforms

    torch.set_num_threads(1)
    manifest = {}
    photos = load_sample_images()
    for fname, arr in zip(photos.filenames, photos.images):
        name = "photo-" + os.path.basename(fname)
        rgb = np.ascontiguousarray(arr, dtype=np.uint8)
        rgb.tofile(os.path.join(out, name + ".rgb"))
        manifest[name + ".rgb"] = list(rgb.shape)
        img = Image.fromarray(rgb, "RGB")
        for cname, (resize, crop) in PHOTO_CONFIGS.items():
            t = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor(),
                                    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
            x = t(img)
            f = f"{name}.{cname}.f32"
            x.numpy().astype("<f4").tofile(os.path.join(out, f))
            manifest[f] = list(x.shape)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def imagefolder(out, root):
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(root)
    samples = [[os.path.relpath(p, root), label] for p, label in ds.samples]
    with open(os.path.join(out, "folder.json"), "w") as f:
        json.dump({"classes": ds.classes, "samples": samples}, f)


def read_idx(path):
    import gzip

    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    nd = magic & 0xFF
    dims = struct.unpack(">" + "I" * nd, data[4 : 4 + 4 * nd])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


def fashion_mnist(out, src):
    result = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(os.path.join(src, prefix + "-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(src, prefix + "-labels-idx1-ubyte.gz"))
        result[split] = {
            "count": int(labels.shape[0]),
            "shape": list(images.shape),
            "first_labels": [int(x) for x in labels[:5]],
            "first_image_sha256": hashlib.sha256(images[0].tobytes()).hexdigest(),
            "first_image_sum": int(images[0].astype(np.int64).sum()),
            "images_sha256": hashlib.sha256(images.tobytes()).hexdigest(),
            "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
        }
    with open(os.path.join(out, "fmnist.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "make-images":
        make_images(*args)
    elif cmd == "preprocess":
        preprocess(*args)
    elif cmd == "preprocess-photos":
        preprocess_photos(*args)
    elif cmd == "imagefolder":
        imagefolder(*args)
    elif cmd == "fashion-mnist":
        fashion_mnist(*args)
    else:
        sys.exit(f"unknown command {cmd}")
