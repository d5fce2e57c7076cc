"""Real PyTorch checkpoints in every layout loader/layout.go reads.

    torch_layouts.py write OUTDIR
        Writes one .pth file per layout, built as each method's code builds
        its model (narrow ResNets: torchvision's classes and names, width 4)
        and saves it, and OUTDIR/manifest.json: for every file the layout,
        arch, epoch, whether an optimizer is present, and its parts as
        loader.Parts names them, each tensor as [shape, sha256 of its values
        as little-endian float32].

    torch_layouts.py readst FILE
        Reads a safetensors file with json and numpy alone (the format as
        written down, not our reader) and prints {"metadata": ...,
        "tensors": {name: [dtype, shape, sha256 as above]}}.

Run with Debian's /usr/bin/python3 (torch 1.13, torchvision 0.14).
"""

import hashlib
import json
import os
import struct
import sys

import numpy as np


def digest(t):
    """sha256 of a tensor's values as little-endian float32."""
    a = np.ascontiguousarray(np.asarray(t, dtype="<f4"))
    return hashlib.sha256(a.tobytes()).hexdigest()


def readst(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    kinds = {"F32": "<f4", "I64": "<i8", "F64": "<f8", "F16": "<f2"}
    out = {"metadata": header.pop("__metadata__", {}), "tensors": {}}
    for name, info in header.items():
        start, end = info["data_offsets"]
        a = np.frombuffer(data[start:end], dtype=kinds[info["dtype"]]).reshape(info["shape"])
        out["tensors"][name] = [info["dtype"], info["shape"], digest(a)]
    json.dump(out, sys.stdout)


def write(outdir):
    import torch
    import torch.nn as nn
    import torchvision.models.resnet as tvr

    torch.manual_seed(0)

    class NarrowResNet(tvr.ResNet):
        """torchvision's ResNet at another width: its blocks, its names."""

        def __init__(self, block, layers, width, num_classes=1000, zero_init_residual=False):
            nn.Module.__init__(self)
            self._norm_layer = nn.BatchNorm2d
            self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(block, width, layers[0])
            self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
            self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
            self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    arches = {
        "resnet18": (tvr.BasicBlock, [2, 2, 2, 2]),
        "resnet34": (tvr.BasicBlock, [3, 4, 6, 3]),
        "resnet50": (tvr.Bottleneck, [3, 4, 6, 3]),
    }
    W = 4

    def resnet(arch, num_classes=10):
        block, layers = arches[arch]
        return NarrowResNet(block, layers, W, num_classes)

    def exercise(model, inputs):
        """A few training-mode steps: running statistics and counters that
        are not their initial values, an optimizer with state."""
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for _ in range(2):
            opt.zero_grad()
            out = model(inputs)
            out = out[0] if isinstance(out, tuple) else out
            out.square().mean().backward()
            opt.step()
        return opt

    x = torch.randn(4, 3, 32, 32)
    manifest = {}

    def record(name, obj, layout, arch, epoch, parts, **save):
        path = os.path.join(outdir, name)
        torch.save(obj, path, **save)
        entry = {"layout": layout, "arch": arch, "epoch": epoch, "optimizer": isinstance(obj, dict) and "optimizer" in obj, "parts": {}}
        for part, sd in parts.items():
            entry["parts"][part] = {k: [list(v.shape), digest(v.detach().cpu().float().numpy())] for k, v in sd.items()}
        manifest[name] = entry

    def sub(sd, prefix, drop=()):
        return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix) and not any(k.startswith(prefix + d) for d in drop)}

    # VICReg (main_vicreg.py): backbone with fc = Identity, projector
    # "2048-8192-8192-8192" (here 128-16-16-16), saved as
    # {epoch, model: DDP state dict, optimizer}.
    class VICReg(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = resnet("resnet50")
            self.backbone.fc = nn.Identity()
            f = [W * 32, 16, 16, 16]
            layers = []
            for i in range(len(f) - 2):
                layers += [nn.Linear(f[i], f[i + 1]), nn.BatchNorm1d(f[i + 1]), nn.ReLU(True)]
            layers.append(nn.Linear(f[-2], f[-1], bias=False))
            self.projector = nn.Sequential(*layers)

        def forward(self, x):
            return self.projector(self.backbone(x))

    vic = VICReg()
    opt = exercise(vic, x)
    ddp = {"module." + k: v for k, v in vic.state_dict().items()}
    record(
        "vicreg.pth",
        {"epoch": 100, "model": ddp, "optimizer": opt.state_dict()},
        "vicreg", "resnet50", 100,
        {"backbone": vic.backbone.state_dict(), "projector": vic.projector.state_dict()},
    )
    # VICReg's released resnet50.pth: the backbone alone.
    record("vicreg_resnet50.pth", vic.backbone.state_dict(), "torchvision", "resnet50", -1, {"backbone": vic.backbone.state_dict()})

    # SwAV (src/resnet50.py): no fc, projection_head 2048-2048-128 (here
    # 128-32-16), prototypes Linear(128, 3000, bias=False) (here 16 -> 30).
    class SwAV(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = resnet("resnet50")
            del self.trunk.fc
            self.projection_head = nn.Sequential(nn.Linear(W * 32, 32), nn.BatchNorm1d(32), nn.ReLU(inplace=True), nn.Linear(32, 16))
            self.prototypes = nn.Linear(16, 30, bias=False)

        def forward(self, x):
            t = self.trunk
            h = t.maxpool(t.relu(t.bn1(t.conv1(x))))
            h = t.layer4(t.layer3(t.layer2(t.layer1(h))))
            h = torch.flatten(t.avgpool(h), 1)
            z = nn.functional.normalize(self.projection_head(h), dim=1)
            return z, self.prototypes(z)

    sw = SwAV()
    opt = exercise(sw, x)
    # SwAV's modules sit at the top of its model: module.conv1, ...
    flat = {}
    flat.update(sw.trunk.state_dict())
    flat.update({"projection_head." + k: v for k, v in sw.projection_head.state_dict().items()})
    flat.update({"prototypes." + k: v for k, v in sw.prototypes.state_dict().items()})
    swav_sd = {"module." + k: v for k, v in flat.items()}
    swav_parts = {"backbone": sw.trunk.state_dict(), "projector": sw.projection_head.state_dict(), "prototypes": sw.prototypes.state_dict()}
    # The released swav_800ep_pretrain.pth.tar: the state dict alone, in
    # the legacy (non-zip) format.
    record("swav_800ep_pretrain.pth.tar", swav_sd, "swav", "resnet50", -1, swav_parts, _use_new_zipfile_serialization=False)
    record("swav_state_dict.pth", {"state_dict": swav_sd}, "swav", "resnet50", -1, swav_parts)
    record("swav_checkpoint.pth.tar", {"epoch": 5, "state_dict": swav_sd, "optimizer": opt.state_dict()}, "swav", "resnet50", 5, swav_parts)

    # SimSiam (simsiam/builder.py): the encoder's fc becomes the projector,
    # its last Linear the original fc, then BatchNorm1d(affine=False).
    class SimSiam(nn.Module):
        def __init__(self, dim=32, pred_dim=8):
            super().__init__()
            self.encoder = resnet("resnet50", num_classes=dim)
            prev_dim = self.encoder.fc.weight.shape[1]
            self.encoder.fc = nn.Sequential(
                nn.Linear(prev_dim, prev_dim, bias=False), nn.BatchNorm1d(prev_dim), nn.ReLU(inplace=True),
                nn.Linear(prev_dim, prev_dim, bias=False), nn.BatchNorm1d(prev_dim), nn.ReLU(inplace=True),
                self.encoder.fc, nn.BatchNorm1d(dim, affine=False))
            self.encoder.fc[6].bias.requires_grad = False
            self.predictor = nn.Sequential(
                nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim), nn.ReLU(inplace=True), nn.Linear(pred_dim, dim))

        def forward(self, x):
            return self.predictor(self.encoder(x))

    ss = SimSiam()
    opt = exercise(ss, x)
    ss_sd = {"module." + k: v for k, v in ss.state_dict().items()}
    enc = ss.encoder.state_dict()
    record(
        "simsiam_checkpoint_0099.pth.tar",
        {"epoch": 100, "arch": "resnet50", "state_dict": ss_sd, "optimizer": opt.state_dict()},
        "simsiam", "resnet50", 100,
        {"backbone": sub(enc, "", drop=("fc.",)), "projector": sub(enc, "fc."), "predictor": ss.predictor.state_dict()},
    )

    # torchvision classifiers.
    for arch in ["resnet18", "resnet34"]:
        m = resnet(arch)
        exercise(m, x)
        sd = m.state_dict()
        record(arch + ".pth", sd, "torchvision", arch, -1, {"backbone": sub(sd, "", drop=("fc.",)), "fc": sub(sd, "fc.")})
    # torchvision's model-zoo files predate num_batches_tracked.
    m = resnet("resnet18")
    sd = {k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
    record("resnet18_zoo.pth", sd, "torchvision", "resnet18", -1, {"backbone": sub(sd, "", drop=("fc.",)), "fc": sub(sd, "fc.")})

    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2])
    elif sys.argv[1] == "readst":
        readst(sys.argv[2])
    else:
        sys.exit("usage: torch_layouts.py write OUTDIR | readst FILE")
