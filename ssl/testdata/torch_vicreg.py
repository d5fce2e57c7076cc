"""PyTorch oracle of the VICReg tests: one training step of main_vicreg.py,
without and with the E2MC criterion, on a small model saved as an official
VICReg checkpoint.

usage: torch_vicreg.py OUTDIR

The model is main_vicreg.py's VICReg on a narrow ResNet-18 (torchvision's
blocks and names, width 8, the small stem: a 3x3 stride-1 conv1 and no max
pool, as layers.ResNetConfig{SmallStem: true} builds it) with the expander
"56-56-40" (Linear, BatchNorm1d, ReLU, Linear, BatchNorm1d, ReLU, Linear
without bias). Its batch norms' affine parameters and running statistics are
randomised so that they are tested.

Writes into OUTDIR:
  ckpt.pth          {epoch, model: module.backbone.* / module.projector.*,
                    optimizer}, as main_vicreg.py saves it, except that the
                    optimizer's param group leaves out the two filter
                    functions (a pickled function is no weight: the loader
                    refuses it, as torch.load(weights_only=True) does)
  views.npy         the batch, [2, 8, 3, 16, 16] float32
  after_plain.pth   the model after one step of VICReg alone, and
  after_e2mc.pth    after one step of VICReg + E2MC, both {epoch, model}
  result.json       the loss terms of both steps and the settings
                    {lr, wd, ent, cov}
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models.resnet as tvr

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "layers", "testdata"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "e2mc", "testdata"))
from torch_optim import LARS, exclude_bias_and_norm  # noqa: E402
from torch_reference import m_spacings_estimator, sample_cov_estimator  # noqa: E402

WIDTH = 8
BATCH = 8
SIZE = 16
MLP = "56-56-40"
LR = 1.0  # LARS moves weights by lr * eta = 0.1% of their norm: resolved in float32
WD = 1e-3
ENT, COV = 10.0, 1.0  # the authors' E2MC coefficients for VICReg


class NarrowResNet(tvr.ResNet):
    """torchvision's ResNet-18 at another width with the small stem."""

    def __init__(self, width):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(tvr.BasicBlock, width, 2)
        self.layer2 = self._make_layer(tvr.BasicBlock, width * 2, 2, stride=2)
        self.layer3 = self._make_layer(tvr.BasicBlock, width * 4, 2, stride=2)
        self.layer4 = self._make_layer(tvr.BasicBlock, width * 8, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def Projector(embedding, mlp):
    """main_vicreg.py's Projector."""
    f = [embedding] + list(map(int, mlp.split("-")))
    layers = []
    for i in range(len(f) - 2):
        layers.append(nn.Linear(f[i], f[i + 1]))
        layers.append(nn.BatchNorm1d(f[i + 1]))
        layers.append(nn.ReLU(True))
    layers.append(nn.Linear(f[-2], f[-1], bias=False))
    return nn.Sequential(*layers)


class VICReg(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_features = int(MLP.split("-")[-1])
        self.backbone = NarrowResNet(WIDTH)
        self.projector = Projector(WIDTH * 8, MLP)

    def forward(self, x, y):
        """main_vicreg.py's forward on one process (the all-gather of one
        replica is the identity); returns the loss and its terms."""
        x = self.projector(self.backbone(x))
        y = self.projector(self.backbone(y))
        repr_loss = F.mse_loss(x, y)
        xe, ye = x, y
        x = x - x.mean(dim=0)
        y = y - y.mean(dim=0)
        std_x = torch.sqrt(x.var(dim=0) + 0.0001)
        std_y = torch.sqrt(y.var(dim=0) + 0.0001)
        std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
        n = x.shape[0]
        cov_x = (x.T @ x) / (n - 1)
        cov_y = (y.T @ y) / (n - 1)
        cov_loss = off_diagonal(cov_x).pow_(2).sum().div(self.num_features) + \
            off_diagonal(cov_y).pow_(2).sum().div(self.num_features)
        loss = 25.0 * repr_loss + 25.0 * std_loss + 1.0 * cov_loss
        return loss, {"sim": repr_loss, "std": std_loss, "cov": cov_loss}, xe, ye


def off_diagonal(x):
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


# main_vicreg.py's LARS and filter (layers/testdata/torch_optim.py) and the
# authors' E2MC on VICReg (e2mc/testdata/torch_reference.py): sigmoid bound,
# m-spacing entropy with eps 1e-7, covariance of the centred bounded values.
def e2mc(za, zb):
    n = za.shape[0]
    m = round(math.sqrt(n))
    terms = {}
    ents, covs = [], []
    for z in (za, zb):
        x = torch.sigmoid(z)
        ents.append(m_spacings_estimator(x, m, 1e-7).mean())
        covs.append(sample_cov_estimator(x))
    loss = COV * (covs[0] + covs[1]) - ENT * (ents[0] + ents[1]) / 2
    terms["ent"] = (ents[0] + ents[1]) / 2
    terms["cov_e2mc"] = covs[0] + covs[1]
    terms["e2mc"] = loss
    return loss, terms


def randomise(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)


def ddp(model):
    return {"module." + k: v for k, v in model.state_dict().items()}


def step(model, views, with_e2mc):
    model.train()
    opt = LARS(model.parameters(), lr=0, weight_decay=WD,
               weight_decay_filter=exclude_bias_and_norm,
               lars_adaptation_filter=exclude_bias_and_norm)
    for g in opt.param_groups:
        g["lr"] = LR
    loss, terms, x, y = model(views[0], views[1])
    out = {k: v.item() for k, v in terms.items()}
    out["vicreg"] = loss.item()
    if with_e2mc:
        reg, rterms = e2mc(x, y)
        loss = loss + reg
        out.update({k: v.item() for k, v in rterms.items()})
    out["loss"] = loss.item()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return out, opt


def main():
    out = sys.argv[1]
    torch.manual_seed(2025)
    torch.set_num_threads(2)
    model = VICReg()
    randomise(model)
    views = torch.randn(2, BATCH, 3, SIZE, SIZE)
    np.save(os.path.join(out, "views.npy"), views.numpy().astype("<f4"))
    init = {k: v.clone() for k, v in model.state_dict().items()}

    result = {"lr": LR, "wd": WD, "ent": ENT, "cov": COV, "mlp": MLP}
    for name, with_e2mc in (("plain", False), ("e2mc", True)):
        model.load_state_dict(init)
        terms, opt = step(model, views, with_e2mc)
        result[name] = terms
        torch.save({"epoch": 1, "model": ddp(model)}, os.path.join(out, "after_%s.pth" % name))
        if name == "plain":
            # The checkpoint: the initial model and the optimizer's state
            # after a step, as a run's model.pth holds them.
            sd = opt.state_dict()
            for g in sd["param_groups"]:
                g.pop("weight_decay_filter")
                g.pop("lars_adaptation_filter")
            ckpt_model = {"module." + k: v for k, v in init.items()}
            torch.save({"epoch": 3, "model": ckpt_model, "optimizer": sd}, os.path.join(out, "ckpt.pth"))
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
