#!/usr/bin/python3
"""PyTorch's side of tools/trainbench: times VICReg + E2MC training steps
(the official VICReg step of main_vicreg.py plus the E2MC criterion on the
expander outputs, LARS as VICReg's) on random images, so that e2mcvk's
trainbench can be compared with the same step on the same machine.

usage: torch_train.py [--arch resnet50] [--width 64] [--small-stem]
                      [--image-size 224] [--batch-size 8] [--mlp 8192-8192-8192]
                      [--criterion e2mc|none] [--steps 5] [--warmup 2]
                      [--threads T] [--cuda] [--tf32] [--json]

Prints images per second (the median over --steps timed steps after
--warmup untimed ones; a step is both views' forward passes, the loss,
backward and the LARS update). The data are random tensors made once: data
loading is not part of the figure, as it is not part of trainbench's.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision


def off_diagonal(x):
    n, m = x.shape
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg_loss(x, y):
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    n, d = x.shape
    cov_x = (x.T @ x) / (n - 1)
    cov_y = (y.T @ y) / (n - 1)
    cov_loss = off_diagonal(cov_x).pow_(2).sum().div(d) + off_diagonal(cov_y).pow_(2).sum().div(d)
    return 25 * repr_loss + 25 * std_loss + cov_loss


def e2mc(z, eps=1e-7):
    """The authors' criterion on VICReg: sigmoid bound, centring, m-spacing
    entropy and covariance (DESIGN.md section 2)."""
    x = torch.sigmoid(z)
    x = x - x.mean(dim=0)
    n, d = x.shape
    m = round(math.sqrt(n))
    s, _ = torch.sort(x, dim=0)
    ent = torch.log((n + 1) / m * (s[m:] - s[: n - m]) + eps).sum(dim=0) / (n - m)
    cov = (x.T @ x) / (n - 1)
    return ent.mean(), off_diagonal(cov).pow(2).sum().div(d)


class LARS(torch.optim.Optimizer):
    """VICReg's LARS (main_vicreg.py): biases and norms excluded."""

    def __init__(self, params, lr, weight_decay=1e-6, momentum=0.9, eta=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim != 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    pn, un = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(pn)
                    q = torch.where(pn > 0.0, torch.where(un > 0, g["eta"] * pn / un, one), one)
                    dp = dp.mul(q)
                st = self.state[p]
                if "mu" not in st:
                    st["mu"] = torch.zeros_like(p)
                mu = st["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def build(args, device):
    net = getattr(torchvision.models, args.arch)(num_classes=10)
    if args.width != 64 or args.small_stem:
        # torchvision has no width knob for conv1/bn1 and the stages of a
        # basic-block ResNet: build it the way layers.ResNetConfig does.
        net = make_resnet(args)
    net.fc = torch.nn.Identity()
    feat = net(torch.zeros(2, 3, args.image_size, args.image_size)).shape[1]
    widths = [feat] + [int(w) for w in args.mlp.split("-")]
    layers = []
    for i in range(len(widths) - 2):
        layers += [torch.nn.Linear(widths[i], widths[i + 1]), torch.nn.BatchNorm1d(widths[i + 1]), torch.nn.ReLU(True)]
    layers.append(torch.nn.Linear(widths[-2], widths[-1], bias=False))
    return net.to(device), torch.nn.Sequential(*layers).to(device)


def make_resnet(args):
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    block, counts = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
                     "resnet50": (Bottleneck, [3, 4, 6, 3])}[args.arch]

    class Net(ResNet):
        def __init__(self):
            torch.nn.Module.__init__(self)
            self._norm_layer = torch.nn.BatchNorm2d
            self.inplanes, self.dilation, self.groups, self.base_width = args.width, 1, 1, 64
            if args.small_stem:
                self.conv1 = torch.nn.Conv2d(3, args.width, 3, 1, 1, bias=False)
                self.maxpool = torch.nn.Identity()
            else:
                self.conv1 = torch.nn.Conv2d(3, args.width, 7, 2, 3, bias=False)
                self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
            self.bn1, self.relu = torch.nn.BatchNorm2d(args.width), torch.nn.ReLU(True)
            w = args.width
            self.layer1 = self._make_layer(block, w, counts[0])
            self.layer2 = self._make_layer(block, 2 * w, counts[1], stride=2)
            self.layer3 = self._make_layer(block, 4 * w, counts[2], stride=2)
            self.layer4 = self._make_layer(block, 8 * w, counts[3], stride=2)
            self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
            self.fc = torch.nn.Identity()

    return Net()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--small-stem", action="store_true")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mlp", default="8192-8192-8192")
    p.add_argument("--criterion", default="e2mc", choices=["e2mc", "none"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--cuda", action="store_true")
    p.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA (off: float32 against float32)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.cuda:
        if not torch.cuda.is_available():
            sys.exit("torch_train.py: --cuda, but CUDA is not available")
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = True
        where = "%s, CUDA %s, TF32 %s" % (torch.cuda.get_device_name(), torch.version.cuda, "on" if args.tf32 else "off")
    else:
        torch.set_num_threads(args.threads)
        device = torch.device("cpu")
        where = "CPU, %d threads" % torch.get_num_threads()
    torch.manual_seed(0)
    backbone, projector = build(args, device)
    params = list(backbone.parameters()) + list(projector.parameters())
    opt = LARS(params, lr=0.2 * args.batch_size / 256)
    s = args.image_size
    x1 = torch.randn(args.batch_size, 3, s, s, device=device)
    x2 = torch.randn(args.batch_size, 3, s, s, device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        zx, zy = projector(backbone(x1)), projector(backbone(x2))
        loss = vicreg_loss(zx, zy)
        if args.criterion == "e2mc":
            ha, ca = e2mc(zx)
            hb, cb = e2mc(zy)
            loss = loss + 1.0 * (ca + cb) - 10.0 * (ha + hb) / 2
        loss.backward()
        opt.step()
        return loss

    times = []
    for i in range(args.warmup + args.steps):
        if args.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step()
        if args.cuda:
            torch.cuda.synchronize()
        else:
            loss.item()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    row = {"impl": "torch", "where": where, "torch": torch.__version__, "arch": args.arch, "width": args.width,
           "image_size": s, "batch_size": args.batch_size, "mlp": args.mlp, "criterion": args.criterion,
           "seconds_per_step": sec, "images_per_s": args.batch_size / sec, "steps": args.steps}
    if args.json:
        print(json.dumps(row))
    else:
        print("torch %s (%s): %s %s %dpx batch %d, %s: %.4f s/step, %.2f images/s (median of %d)" % (
            torch.__version__, where, args.arch, args.mlp, s, args.batch_size, args.criterion, sec, args.batch_size / sec,
            args.steps))


if __name__ == "__main__":
    main()
