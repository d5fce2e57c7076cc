#!/usr/bin/python3
"""PyTorch oracle of the SimSiam tests: an official-layout SimSiam checkpoint
of a small model and one training step from it, without and with E2MC.

usage: torch_simsiam.py OUTDIR E2MC_REFERENCE LR PRED_LR WD ENT COV

The model is simsiam/builder.py's SimSiam around a narrow torchvision
ResNet-18 (its classes and names; width 8, the small stem: a 3x3 stride-1
conv1 and no max pool, as layers.ResNetConfig{Depth: 18, Width: 8,
SmallStem: true} builds it), dim 64, pred_dim 16. Its batch norms' affine
parameters and running statistics are randomised, so that they are tested
(zero_init_residual would otherwise leave the last norm of each block at 0).

Writes into OUTDIR:
  checkpoint.pth   {epoch, arch, state_dict, optimizer} as main_simsiam.py
                   saves it (DDP names: module.encoder.*, the projector in
                   module.encoder.fc.*, module.predictor.*)
  x1.npy, x2.npy   the two views [8, 3, 20, 20]
  <case>/...       for case "plain" (the SimSiam loss) and "e2mc" (plus
                   E2MC on z1 and z2: normal-CDF bound, float32 eps, m =
                   round(sqrt(N)), E2MC_REFERENCE's torch formulation), one
                   SGD step of main_simsiam.py (momentum 0.9, weight decay
                   WD, the encoder at LR, the predictor at the fixed PRED_LR):
                   grad/<name>  each parameter's gradient (raw float32)
                   after/<name> every state entry after the step (raw float32)
  manifest.json    {"cases": {case: {"terms": {...}, "grad": {name: shape},
                   "after": {name: shape}}}}
"""
import copy
import importlib.util
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torchvision.models.resnet as tvr

WIDTH, DIM, PRED_DIM, BATCH, SIZE = 8, 64, 16, 8, 20


class SmallResNet(tvr.ResNet):
    """torchvision's ResNet at another width with the small stem: its
    blocks, its names, its initialisation."""

    def __init__(self, block, layers, width, num_classes, zero_init_residual=False):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, tvr.BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)


def resnet18(num_classes, zero_init_residual):
    return SmallResNet(tvr.BasicBlock, [2, 2, 2, 2], WIDTH, num_classes, zero_init_residual)


class SimSiam(nn.Module):
    """simsiam/builder.py, line for line."""

    def __init__(self, base_encoder, dim=2048, pred_dim=512):
        super().__init__()
        self.encoder = base_encoder(num_classes=dim, zero_init_residual=True)
        prev_dim = self.encoder.fc.weight.shape[1]
        self.encoder.fc = nn.Sequential(
            nn.Linear(prev_dim, prev_dim, bias=False), nn.BatchNorm1d(prev_dim), nn.ReLU(inplace=True),
            nn.Linear(prev_dim, prev_dim, bias=False), nn.BatchNorm1d(prev_dim), nn.ReLU(inplace=True),
            self.encoder.fc, nn.BatchNorm1d(dim, affine=False))
        self.encoder.fc[6].bias.requires_grad = False  # hack: not use bias as it is followed by BN
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim), nn.ReLU(inplace=True),
            nn.Linear(pred_dim, dim))


class DDP(nn.Module):
    """Stands for DistributedDataParallel: the "module." prefix."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def optimizer(model, lr, pred_lr, wd):
    """main_simsiam.py's SGD with fix_pred_lr; adjust_learning_rate sets
    the encoder's group to the schedule's lr and the predictor's to init_lr."""
    params = [{"params": model.module.encoder.parameters(), "fix_lr": False},
              {"params": model.module.predictor.parameters(), "fix_lr": True}]
    opt = torch.optim.SGD(params, lr, momentum=0.9, weight_decay=wd)
    for g in opt.param_groups:
        g["lr"] = pred_lr if g["fix_lr"] else lr
    return opt


def main():
    out, ref_path = sys.argv[1], sys.argv[2]
    lr, pred_lr, wd, ent_coeff, cov_coeff = map(float, sys.argv[3:8])
    spec = importlib.util.spec_from_file_location("e2mc_reference", ref_path)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)

    torch.manual_seed(20)
    torch.set_num_threads(2)
    model = DDP(SimSiam(resnet18, DIM, PRED_DIM))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(1000)
    torch.save({"epoch": 100, "arch": "resnet18", "state_dict": model.state_dict(),
                "optimizer": optimizer(model, lr, pred_lr, wd).state_dict()},
               os.path.join(out, "checkpoint.pth"))
    x1 = torch.randn(BATCH, 3, SIZE, SIZE)
    x2 = torch.randn(BATCH, 3, SIZE, SIZE)
    np.save(os.path.join(out, "x1.npy"), x1.numpy())
    np.save(os.path.join(out, "x2.npy"), x2.numpy())

    manifest = {"cases": {}}
    for case in ["plain", "e2mc"]:
        m = copy.deepcopy(model)
        m.train()
        opt = optimizer(m, lr, pred_lr, wd)
        opt.zero_grad()
        enc, pred = m.module.encoder, m.module.predictor
        # main_simsiam.py: p1, p2, z1, z2 = model(x1, x2) (the encoder on
        # each view on its own, then the predictor), with z detached in the
        # loss; E2MC acts on z with its gradient.
        z1, z2 = enc(x1), enc(x2)
        p1, p2 = pred(z1), pred(z2)
        cos = nn.CosineSimilarity(dim=1)
        simsiam = -(cos(p1, z2.detach()).mean() + cos(p2, z1.detach()).mean()) * 0.5
        terms = {"simsiam": simsiam.item()}
        loss = simsiam
        if case == "e2mc":
            eps = torch.finfo(torch.float32).eps
            mm = round(math.sqrt(BATCH))
            b1, b2 = ref.bound(z1, "normal"), ref.bound(z2, "normal")
            h1, h2 = ref.m_spacings_estimator(b1, mm, eps).mean(), ref.m_spacings_estimator(b2, mm, eps).mean()
            c1, c2 = ref.sample_cov_estimator(b1), ref.sample_cov_estimator(b2)
            e2mc = cov_coeff * (c1 + c2) - ent_coeff * (h1 + h2) / 2
            terms.update({"entropy_a": h1.item(), "entropy_b": h2.item(), "cov_a": c1.item(), "cov_b": c2.item(), "e2mc": e2mc.item()})
            loss = loss + e2mc
        terms["total"] = loss.item()
        loss.backward()
        entry = {"terms": terms, "grad": {}, "after": {}}

        def save(kind, name, t):
            a = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4"))
            path = os.path.join(out, case, kind, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            a.tofile(path)
            entry[kind][name] = list(t.shape)

        for name, p in m.named_parameters():
            if p.grad is not None:
                save("grad", name, p.grad)
        opt.step()
        for name, t in m.state_dict().items():
            save("after", name, t.float())
        manifest["cases"][case] = entry
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
