#!/usr/bin/python3
"""PyTorch oracle of the SwAV tests: one training step of a small SwAV model
as facebookresearch/swav's main_swav.py takes it (its model's forward, its
swav loss with distributed_sinkhorn on one process, the freezing of the
prototypes, SGD wrapped in apex's LARC with clip=False), with and without
the E2MC criterion on the projections of crops 0 and 1.

usage: torch_swav.py OUTDIR

The model is a torchvision ResNet-18 at width 8 with the small stem (a 3x3
stride-1 conv1, no max pool; layers.ResNetConfig{Depth: 18, Width: 8,
SmallStem: true}), the projection head 32-16 (Linear, BatchNorm1d, ReLU,
Linear) and 20 prototypes. The batch is 8 images in 4 crops: 2 of 24 px and
2 of 12 px. Writes into OUTDIR:
  model.pth            the initial state dict in SwAV's layout ("module."
                       prefix; batch norms with random affine parameters and
                       running statistics so that they are tested)
  crop0.npy..crop3.npy the crops [8, 3, S, S]
  queue.npy            the queue of the "queue" case before the step
                       [2, 16, 16] (normalised rows)
  <case>/result.json   {"swav": the swav loss, "e2mc": the criterion (0
                       without it), "total": their sum}
  <case>/grad/<name>.npy   each parameter's gradient before the optimizer
                       step (none for frozen prototypes)
  <case>/after/<name>.npy  the whole state dict after the step (names
                       without "module.")
  queue/queue_after.npy    the queue after the "queue" case's step
Cases: "frozen" (iteration < freeze_prototypes_niters: no prototype update),
"plain" (prototypes updated), "e2mc" (plain + E2MC, normal-CDF bound, eps
float32's, ent 10, cov 1), "queue" (plain with a full queue).
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "e2mc", "testdata"))
from torch_reference import bound, m_spacings_estimator, sample_cov_estimator  # noqa: E402

WIDTH, DIM, HIDDEN, K = 8, 16, 32, 20
BATCH, CROPS, SIZES = 8, [2, 2], [24, 12]
ASSIGN = [0, 1]
TEMPERATURE, EPSILON, ITERS = 0.1, 0.05, 3
LR, WD = 50.0, 0.05
QUEUE = 16
ENT, COV = 10.0, 1.0


class SwAVResNet(tvr.ResNet):
    """torchvision's ResNet-18 at width 8 with the small stem and no fc, with
    the forward of SwAV's src/resnet50.py: crops of one resolution through
    the backbone together, then the projection head, normalisation and the
    prototypes."""

    def __init__(self):
        nn.Module.__init__(self)
        block, layers = tvr.BasicBlock, [2, 2, 2, 2]
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = WIDTH, 1, 1, 64
        self.conv1 = nn.Conv2d(3, WIDTH, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTH)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, WIDTH, layers[0])
        self.layer2 = self._make_layer(block, WIDTH * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, WIDTH * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, WIDTH * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.projection_head = nn.Sequential(
            nn.Linear(WIDTH * 8, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(inplace=True), nn.Linear(HIDDEN, DIM))
        self.prototypes = nn.Linear(DIM, K, bias=False)

    def forward_backbone(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, inputs):
        idx_crops = torch.cumsum(torch.unique_consecutive(
            torch.tensor([inp.shape[-1] for inp in inputs]), return_counts=True)[1], 0)
        start_idx = 0
        for end_idx in idx_crops:
            _out = self.forward_backbone(torch.cat(inputs[start_idx:end_idx]))
            output = _out if start_idx == 0 else torch.cat((output, _out))
            start_idx = end_idx
        z = self.projection_head(output)
        x = F.normalize(z, dim=1, p=2)
        return z, x, self.prototypes(x)


class LARC:
    """apex.parallel.LARC's step with clip=False (as layers/testdata/torch_optim.py)."""

    def __init__(self, optimizer, trust_coefficient=0.001, eps=1e-8):
        self.optim, self.trust_coefficient, self.eps = optimizer, trust_coefficient, eps

    def step(self):
        with torch.no_grad():
            weight_decays = []
            for group in self.optim.param_groups:
                weight_decay = group["weight_decay"]
                weight_decays.append(weight_decay)
                group["weight_decay"] = 0
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    param_norm = torch.norm(p.data)
                    grad_norm = torch.norm(p.grad.data)
                    if param_norm != 0 and grad_norm != 0:
                        adaptive_lr = self.trust_coefficient * param_norm / (
                            grad_norm + param_norm * weight_decay + self.eps)
                        p.grad.data += weight_decay * p.data
                        p.grad.data *= adaptive_lr
        self.optim.step()
        for group, wd in zip(self.optim.param_groups, weight_decays):
            group["weight_decay"] = wd


@torch.no_grad()
def distributed_sinkhorn(out):
    """main_swav.py's, on one process (world_size 1, all_reduce the identity)."""
    Q = torch.exp(out / EPSILON).t()
    B = Q.shape[1]
    K_ = Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(ITERS):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K_
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def e2mc(z):
    """The authors' criterion on two views (float64), normal-CDF bound."""
    eps = float(np.finfo(np.float32).eps)
    terms = []
    for v in (z[:BATCH], z[BATCH:2 * BATCH]):
        x = bound(v.double(), "normal")
        m = round(math.sqrt(x.shape[0]))
        terms.append((m_spacings_estimator(x, m, eps).mean(), sample_cov_estimator(x)))
    (ha, ca), (hb, cb) = terms
    return COV * (ca + cb) - ENT * (ha + hb) / 2


def step(init, crops, case, queue):
    model = SwAVResNet()
    model.load_state_dict(init)
    model.train()
    opt = LARC(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=WD))
    with torch.no_grad():
        w = F.normalize(model.prototypes.weight.data.clone(), dim=1, p=2)
        model.prototypes.weight.copy_(w)
    z, embedding, output = model(crops)
    embedding = embedding.detach()
    bs = BATCH
    nmb = sum(CROPS)
    loss = 0
    use_the_queue = False
    for i, crop_id in enumerate(ASSIGN):
        with torch.no_grad():
            out = output[bs * crop_id: bs * (crop_id + 1)].detach()
            if queue is not None:
                if use_the_queue or not torch.all(queue[i, -1, :] == 0):
                    use_the_queue = True
                    out = torch.cat((torch.mm(queue[i], model.prototypes.weight.t()), out))
                queue[i, bs:] = queue[i, :-bs].clone()
                queue[i, :bs] = embedding[crop_id * bs: (crop_id + 1) * bs]
            q = distributed_sinkhorn(out)[-bs:]
        subloss = 0
        for v in np.delete(np.arange(nmb), crop_id):
            x = output[bs * v: bs * (v + 1)] / TEMPERATURE
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (nmb - 1)
    loss /= len(ASSIGN)
    crit = e2mc(z) if case == "e2mc" else torch.zeros((), dtype=torch.float64)
    total = loss + crit.float()
    opt.optim.zero_grad()
    total.backward()
    if case == "frozen":
        for name, p in model.named_parameters():
            if "prototypes" in name:
                p.grad = None
    # LARC changes the gradients in place: keep them as backward left them.
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return model, grads, {"swav": loss.item(), "e2mc": crit.item(), "total": total.item()}


def main():
    out = sys.argv[1]
    torch.manual_seed(7)
    torch.set_num_threads(2)
    model = SwAVResNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(3)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"module." + k: v for k, v in init.items()}, os.path.join(out, "model.pth"))
    crops = []
    for n, s in zip(CROPS, SIZES):
        for _ in range(n):
            crops.append(torch.randn(BATCH, 3, s, s))
    for i, c in enumerate(crops):
        np.save(os.path.join(out, "crop%d.npy" % i), c.numpy().astype("<f4"))
    queue0 = F.normalize(torch.randn(len(ASSIGN), QUEUE, DIM), dim=2)
    np.save(os.path.join(out, "queue.npy"), queue0.numpy().astype("<f4"))
    for case in ["frozen", "plain", "e2mc", "queue"]:
        queue = queue0.clone() if case == "queue" else None
        after, grads, res = step(init, crops, case, queue)
        d = os.path.join(out, case, "grad")
        os.makedirs(d, exist_ok=True)
        for k, v in grads.items():
            np.save(os.path.join(d, k + ".npy"), v.numpy().astype("<f4"))
        d = os.path.join(out, case, "after")
        os.makedirs(d, exist_ok=True)
        for k, v in after.state_dict().items():
            np.save(os.path.join(d, k + ".npy"), v.detach().float().numpy().astype("<f4"))
        if queue is not None:
            np.save(os.path.join(out, case, "queue_after.npy"), queue.numpy().astype("<f4"))
        with open(os.path.join(out, case, "result.json"), "w") as f:
            json.dump(res, f)


if __name__ == "__main__":
    main()
