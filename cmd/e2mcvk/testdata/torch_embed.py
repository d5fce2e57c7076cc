"""PyTorch oracle of `e2mcvk embed` and `e2mcvk convert`.

usage: torch_embed.py make OUTDIR
       torch_embed.py check PTH IMAGES EXPECTED.npy

make writes into OUTDIR a torchvision ResNet-50 with random weights and
randomised batch-norm statistics, saved in the four layouts e2mcvk reads, a
small ImageFolder, and the embeddings PyTorch computes in eval mode:
  images/<class>/<name>.png  2 classes x 3 images, 40 x 48 px (one grey, one
                             palette, one with alpha)
  vicreg.pth       {epoch, model: module.backbone.* + module.projector.*,
                    optimizer} (the projector narrowed to 64-64-32 so the
                    fixture stays small; VICReg's is 8192-8192-8192)
  swav.pth         module.* backbone, module.projection_head.{0,1,3}
                   (2048-64-16), module.prototypes.weight [30, 16], in the
                   legacy (non-zip) format of SwAV's released files
  simsiam.pth      {epoch, arch, state_dict: module.encoder.* with the
                    projector as encoder.fc (2048-64-64-32),
                    module.predictor.* (32-16-32), optimizer}
  torchvision.pth  the plain state dict with a 10-class fc
  backbone.npy     pooled 2048-d features (fc = Identity) of the images in
                   ImageFolder order, no resize or crop
  projector.npy    VICReg's projector on those features
  logits.npy       the torchvision model's fc output
  labels.npy       the class indices

check loads PTH (a plain backbone state dict written by e2mcvk convert) into
torchvision's resnet50 with fc = Identity (strict, no fc keys) and prints the
largest relative difference of its features on IMAGES from EXPECTED.npy.
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torchvision
from PIL import Image

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def images(root):
    """Image paths in ImageFolder order and their labels."""
    ds = torchvision.datasets.ImageFolder(root)
    return [p for p, _ in ds.samples], [c for _, c in ds.samples]


def batch(paths):
    tf = torchvision.transforms.Compose([
        torchvision.transforms.ToTensor(), torchvision.transforms.Normalize(MEAN, STD)])
    return torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])


def randomise_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)


def mlp(spec, last_bias, last_bn=False, hidden_bias=True):
    layers = []
    for i in range(len(spec) - 2):
        layers += [nn.Linear(spec[i], spec[i + 1], bias=hidden_bias), nn.BatchNorm1d(spec[i + 1]), nn.ReLU(True)]
    layers.append(nn.Linear(spec[-2], spec[-1], bias=last_bias))
    if last_bn:
        layers.append(nn.BatchNorm1d(spec[-1], affine=False))
    return nn.Sequential(*layers)


def prefixed(prefix, sd):
    """The entries of sd under prefix, copied: a state dict's tensors are
    the live parameters, which the optimizer step below changes."""
    return {prefix + k: v.clone() for k, v in sd.items()}


def make(out):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    for c, cls in enumerate(["cat", "dog"]):
        os.makedirs(os.path.join(out, "images", cls), exist_ok=True)
        for i in range(3):
            a = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            img = Image.fromarray(a)
            if c == 0 and i == 1:
                img = img.convert("L")
            if c == 1 and i == 0:
                img = img.convert("P")
            if c == 1 and i == 2:
                img = Image.fromarray(np.concatenate([a, a[:, :, :1]], axis=2), "RGBA")
            img.save(os.path.join(out, "images", cls, "img%d.png" % i))
    paths, labels = images(os.path.join(out, "images"))
    x = batch(paths)

    model = torchvision.models.resnet50(num_classes=10)
    randomise_bn(model)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    fc = model.fc
    model.fc = nn.Identity()
    backbone = {k: v for k, v in model.state_dict().items()}
    with torch.no_grad():
        feats = model(x)
    model.fc = fc

    projector = mlp([2048, 64, 64, 32], last_bias=False)
    randomise_bn(projector)
    projector.eval()
    with torch.no_grad():
        proj = projector(feats)
    vic_model = {**prefixed("module.backbone.", backbone), **prefixed("module.projector.", projector.state_dict())}
    params = [p for p in projector.parameters()]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    projector(torch.randn(4, 2048)).sum().backward()
    opt.step()
    torch.save({"epoch": 10, "model": vic_model, "optimizer": opt.state_dict()}, os.path.join(out, "vicreg.pth"))

    head = mlp([2048, 64, 16], last_bias=True)
    randomise_bn(head)
    swav = {**prefixed("module.", backbone), **prefixed("module.projection_head.", head.state_dict()),
            "module.prototypes.weight": torch.randn(30, 16)}
    # SwAV's released files use the legacy (pre-1.6, non-zip) format.
    torch.save(swav, os.path.join(out, "swav.pth"), _use_new_zipfile_serialization=False)

    enc_fc = mlp([2048, 64, 64, 32], last_bias=True, last_bn=True, hidden_bias=False)
    pred = mlp([32, 16, 32], last_bias=True, hidden_bias=False)
    randomise_bn(enc_fc)
    randomise_bn(pred)
    simsiam = {**prefixed("module.encoder.", backbone), **prefixed("module.encoder.fc.", enc_fc.state_dict()),
               **prefixed("module.predictor.", pred.state_dict())}
    torch.save({"epoch": 100, "arch": "resnet50", "state_dict": simsiam, "optimizer": {"state": {}, "param_groups": []}},
               os.path.join(out, "simsiam.pth"))

    torch.save(model.state_dict(), os.path.join(out, "torchvision.pth"))
    np.save(os.path.join(out, "backbone.npy"), feats.numpy().astype(np.float32))
    np.save(os.path.join(out, "projector.npy"), proj.numpy().astype(np.float32))
    np.save(os.path.join(out, "logits.npy"), logits.numpy().astype(np.float32))
    np.save(os.path.join(out, "labels.npy"), np.array(labels, dtype=np.float32))


def check(pth, root, expected):
    model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    model.load_state_dict(torch.load(pth), strict=True)
    model.eval()
    paths, _ = images(root)
    with torch.no_grad():
        feats = model(batch(paths)).numpy()
    want = np.load(expected)
    print("%.3g" % (np.linalg.norm(feats - want) / np.linalg.norm(want)))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        check(*sys.argv[2:5])
