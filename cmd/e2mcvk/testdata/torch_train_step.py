#!/usr/bin/python3
"""PyTorch oracle of `e2mcvk train`'s first step: an official-layout
checkpoint of a small VICReg, SwAV or SimSiam model, and one training step
from it on given views, without and with E2MC.

usage: torch_train_step.py METHOD VIEWS_DIR OUTDIR LR PRED_LR WD

METHOD is vicreg, swav or simsiam; the models, their randomised batch
norms and the official code's pieces come from ssl/testdata/torch_<method>.py
(imported, not changed): a ResNet-18 of width 8 with the small stem, VICReg's
expander 56-56-40, SwAV's head 32-16 and 20 prototypes, SimSiam's dim 64 and
pred_dim 16. VIEWS_DIR holds view0.npy, view1.npy, ... ([B, 3, S, S] float32,
the batch as the command builds it). LR and PRED_LR are the learning rates
the step uses as they are (already scaled by the batch where the method
scales them; PRED_LR is SimSiam's fixed predictor rate), WD the weight
decay. E2MC has the method's default coefficients and bound (DESIGN.md
section 2), computed in float64 with e2mc/testdata/torch_reference.py.

Writes into OUTDIR:
  ckpt.pth            the initial model in the method's official layout:
                      VICReg {epoch 3, model, optimizer}; SwAV {epoch 1,
                      state_dict} as main_swav.py's checkpoint.pth.tar
                      (iteration 1 x batches an epoch: past the prototypes'
                      freezing); SimSiam {epoch 100, arch, state_dict,
                      optimizer}
  swav_plain.pth      (SwAV only) the same model as a plain state dict, as
                      SwAV's released weights: epoch 0, prototypes frozen
  <case>/after.pth    the model after the step, in the layout of ckpt.pth
  <case>/terms.json   the loss terms under the names e2mcvk logs them:
                      the method's ("sim", "std", "cov"; "swav";
                      "simsiam"), E2MC's ("ent": the mean entropy of the two
                      views, "cov_e2mc": cov_a + cov_b) and "loss", the total
  margin.json         how near the step's forward (the same in every case)
                      puts a ReLU input to the kink: "relu_margin", "where",
                      "near", "rounding" (see kink_check)
Cases: "none" and "e2mc"; for SwAV also "none_frozen" (from swav_plain.pth:
no prototype update, main_swav.py's p.grad = None).
"""
import copy
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..", "..")
sys.path.insert(0, os.path.join(ROOT, "ssl", "testdata"))
sys.path.insert(0, os.path.join(ROOT, "e2mc", "testdata"))
import torch_reference as ref  # noqa: E402

# E2MC's settings per method (DESIGN.md section 2): bound, eps, ent, cov.
E2MC = {
    "vicreg": ("sigmoid", 1e-7, 10.0, 1.0),
    "swav": ("normal", float(np.finfo(np.float32).eps), 10.0, 1.0),
    "simsiam": ("normal", float(np.finfo(np.float32).eps), 1.0, 25.0),
}


def e2mc(method, za, zb):
    """The criterion on two views' embeddings, in float64: its value and
    its terms."""
    kind, eps, ent, cov = E2MC[method]
    hs, cs = [], []
    for z in (za, zb):
        x = ref.bound(z.double(), kind)
        m = round(math.sqrt(x.shape[0]))
        hs.append(ref.m_spacings_estimator(x, m, eps).mean())
        cs.append(ref.sample_cov_estimator(x))
    value = cov * (cs[0] + cs[1]) - ent * (hs[0] + hs[1]) / 2
    return value, {"ent": ((hs[0] + hs[1]) / 2).item(), "cov_e2mc": (cs[0] + cs[1]).item()}


def randomise(model, tracked):
    """Random batch-norm affine parameters and running statistics, so that
    they are tested (as the ssl oracles do)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(tracked)


def prefixed(sd):
    return {"module." + k: v for k, v in sd.items()}


# VICReg: main_vicreg.py's model, loss and LARS (torch_vicreg.py).

def vicreg_setup(out):
    import torch_vicreg as tv
    model = tv.VICReg()
    randomise(model, 7)
    opt = tv.LARS(model.parameters(), lr=0)
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        # A pickled function is no weight: the loader refuses it.
        g.pop("weight_decay_filter")
        g.pop("lars_adaptation_filter")
    torch.save({"epoch": 3, "model": prefixed(model.state_dict()), "optimizer": sd}, os.path.join(out, "ckpt.pth"))
    return model


def vicreg_step(model, views, lr, pred_lr, wd, with_e2mc):
    import torch_vicreg as tv
    model.train()
    opt = tv.LARS(model.parameters(), lr=lr, weight_decay=wd,
                  weight_decay_filter=tv.exclude_bias_and_norm,
                  lars_adaptation_filter=tv.exclude_bias_and_norm)
    loss, terms, x, y = model(views[0], views[1])
    out = {k: v.item() for k, v in terms.items()}
    if with_e2mc:
        reg, rterms = e2mc("vicreg", x, y)
        loss = loss + reg.float()
        out.update(rterms)
    out["loss"] = loss.item()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {"epoch": 4, "model": prefixed(model.state_dict())}, out


# SwAV: main_swav.py's model, swav loss, prototype freezing and LARC
# (torch_swav.py); crops of every view the command makes (2 + 6), no queue
# (the command's queue starts at epoch 15).

def swav_setup(out):
    import torch_swav as ts
    model = ts.SwAVResNet()
    randomise(model, 3)
    sd = model.state_dict()
    torch.save({"epoch": 1, "state_dict": prefixed(sd)}, os.path.join(out, "ckpt.pth"))
    torch.save(prefixed(sd), os.path.join(out, "swav_plain.pth"))
    return model


def swav_step(model, views, lr, pred_lr, wd, with_e2mc, frozen=False):
    import torch_swav as ts
    model.train()
    opt = ts.LARC(torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd))
    with torch.no_grad():
        w = F.normalize(model.prototypes.weight.data.clone(), dim=1, p=2)
        model.prototypes.weight.copy_(w)
    z, embedding, output = model(list(views))
    bs, nmb = views[0].shape[0], len(views)
    loss = 0
    for crop_id in ts.ASSIGN:
        with torch.no_grad():
            out = output[bs * crop_id: bs * (crop_id + 1)].detach()
            q = ts.distributed_sinkhorn(out)[-bs:]
        subloss = 0
        for v in np.delete(np.arange(nmb), crop_id):
            x = output[bs * v: bs * (v + 1)] / ts.TEMPERATURE
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (nmb - 1)
    loss /= len(ts.ASSIGN)
    terms = {"swav": loss.item()}
    if with_e2mc:
        reg, rterms = e2mc("swav", z[:bs], z[bs:2 * bs])
        loss = loss + reg.float()
        terms.update(rterms)
    terms["loss"] = loss.item()
    opt.optim.zero_grad()
    loss.backward()
    if frozen:
        for name, p in model.named_parameters():
            if "prototypes" in name:
                p.grad = None
    opt.step()
    sd = prefixed(model.state_dict())
    if frozen:
        return sd, terms
    return {"epoch": 1, "state_dict": sd}, terms


# SimSiam: simsiam/builder.py's model and main_simsiam.py's SGD with the
# fixed predictor rate (torch_simsiam.py).

def simsiam_setup(out):
    import torch_simsiam as tsim
    model = tsim.DDP(tsim.SimSiam(tsim.resnet18, tsim.DIM, tsim.PRED_DIM))
    randomise(model, 1000)
    torch.save({"epoch": 100, "arch": "resnet18", "state_dict": model.state_dict(),
                "optimizer": tsim.optimizer(model, 0.0, 0.0, 0.0).state_dict()},
               os.path.join(out, "ckpt.pth"))
    return model


def simsiam_step(model, views, lr, pred_lr, wd, with_e2mc):
    import torch_simsiam as tsim
    model.train()
    opt = tsim.optimizer(model, lr, pred_lr, wd)
    opt.zero_grad()
    enc, pred = model.module.encoder, model.module.predictor
    x1, x2 = views[0], views[1]
    z1, z2 = enc(x1), enc(x2)
    p1, p2 = pred(z1), pred(z2)
    cos = torch.nn.CosineSimilarity(dim=1)
    loss = -(cos(p1, z2.detach()).mean() + cos(p2, z1.detach()).mean()) * 0.5
    terms = {"simsiam": loss.item()}
    if with_e2mc:
        reg, rterms = e2mc("simsiam", z1, z2)
        loss = loss + reg.float()
        terms.update(rterms)
    terms["loss"] = loss.item()
    loss.backward()
    opt.step()
    return {"epoch": 100, "arch": "resnet18", "state_dict": model.state_dict()}, terms


# The margin of the ReLUs. A float32 forward pass (PyTorch's or the
# command's) rounds a ReLU's input by up to some 1e-5 of the size of the
# terms it sums, differently in each; an input nearer the kink than that
# may be on in one and off in the other, and every gradient below it then
# differs by as much as that input's gradient, which can far exceed the
# tolerances (one such element of layer3.1 in SwAV's batch of
# fashion-mnist:train's first 8 images moves the
# backbone's update by 1e-3 when E2MC weights it). relu_margin measures the
# distance on the exact (float64) forward of the step, for every ReLU
# module the forward calls (the models have no max pool: the small stem's
# is the identity), element by element, relative to the size of the terms
# the input sums:
#   after a batch norm (stem, blocks' first ReLU, heads):
#       |y| / (|y - b| + |b|)                 y = w * xhat + b
#   after a block's residual add (y = out + identity, out = bn2's output):
#       |y| / (|out - b| + |b| + |identity|)
#   VICReg's std term relu(1 - std):  |1 - std| / (1 + std)
# and takes the minimum. The forward does not depend on the case.

def relu_inputs(method, model, views, dtype):
    """Every ReLU input of the step's forward in call order: its name
    ("where"), its values y (float64) and the size of their summands
    ("scale"), on a copy of model and views in dtype (train mode, as the
    step). Returns the calls and VICReg's std of both views."""
    m = copy.deepcopy(model).to(dtype)
    m.train()
    xs = [v.to(dtype) for v in views]
    names = {mod: name for name, mod in m.named_modules()}
    bns = {}  # id of a batch norm's output: (tensor, version, value, bias)
    calls = []

    def bn_hook(mod, inp, out):
        bias = mod.bias.detach() if mod.affine else torch.zeros(out.shape[1], dtype=out.dtype)
        bns[id(out)] = (out, out._version, out.detach().double().clone(),
                        bias.double().view(1, -1, *[1] * (out.dim() - 2)))

    def relu_pre(mod, inp):
        y = inp[0]
        rec = bns.get(id(y))
        if rec is None or rec[0] is not y:
            raise RuntimeError("ReLU %s: input from no batch norm: its margin is undefined" % names[mod])
        _, version, bn, b = rec
        # BasicBlock adds the identity into bn2's output in place.
        kind = "bn" if y._version == version else "residual"
        y = y.detach().double().clone()
        scale = (bn - b).abs() + b.abs()
        if kind == "residual":
            scale = scale + (y - bn).abs()
        k = sum(1 for c in calls if c["mod"] is mod)
        calls.append({"mod": mod, "where": "%s call %d (%s)" % (names[mod], k, kind), "y": y, "scale": scale})

    for mod in m.modules():
        if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            mod.register_forward_hook(bn_hook)
        elif isinstance(mod, torch.nn.ReLU):
            mod.register_forward_pre_hook(relu_pre)
        elif isinstance(mod, (torch.nn.MaxPool1d, torch.nn.MaxPool2d)):
            raise RuntimeError("max pool %s: no margin defined" % names[mod])
    std = []
    with torch.no_grad():
        if method == "vicreg":
            _, _, a, b = m(xs[0], xs[1])
            for z in (a, b):
                std.append(torch.sqrt((z - z.mean(dim=0)).var(dim=0) + 0.0001).double())
        elif method == "swav":
            m.prototypes.weight.copy_(F.normalize(m.prototypes.weight, dim=1, p=2))
            m(xs)
        else:
            enc, pred = m.module.encoder, m.module.predictor
            pred(enc(xs[0]))
            pred(enc(xs[1]))
    if not calls:
        raise RuntimeError("no ReLU called")
    return calls, std


def kink_check(method, model, views):
    """margin.json: relu_margin and where it is (see above); near, the
    number of inputs with a margin under NEAR; rounding, the number of
    inputs no farther from the kink than ROUNDING times the largest error
    of PyTorch's float32 forward over the input's channel (those a float32
    pass may put on the other side; float32 errors accumulate through the
    network, so the deeper, the farther)."""
    c32, s32 = relu_inputs(method, model, views, torch.float32)
    c64, s64 = relu_inputs(method, model, views, torch.float64)
    if [c["where"] for c in c64] != [c["where"] for c in c32]:
        raise RuntimeError("float32 and float64 forwards call the ReLUs differently")
    out = {"relu_margin": math.inf, "where": "", "near": 0, "rounding": 0}
    for a, b in zip(c64, c32):
        r = torch.where(a["scale"] > 0, a["y"].abs() / a["scale"], torch.full_like(a["y"], math.inf))
        i = int(torch.argmin(r))
        out["near"] += int((r < NEAR).sum().item())
        if r.flatten()[i].item() < out["relu_margin"]:
            out["relu_margin"] = r.flatten()[i].item()
            out["where"] = "%s element %s" % (a["where"], list(np.unravel_index(i, tuple(r.shape))))
        e = (b["y"] - a["y"]).abs()
        e = e.amax(dim=[d for d in range(e.dim()) if d != 1], keepdim=True)
        out["rounding"] += int((a["y"].abs() <= ROUNDING * e).sum().item())
    for name, a, b in zip("xy", s64, s32):
        r = (1 - a).abs() / (1 + a)
        out["near"] += int((r < NEAR).sum().item())
        out["rounding"] += int(((1 - a).abs() <= ROUNDING * (b - a).abs().max()).sum().item())
        if r.min().item() < out["relu_margin"]:
            out["relu_margin"], out["where"] = r.min().item(), "std term of %s, feature %d" % (name, int(torch.argmin(r)))
    return out


NEAR = 1e-5
ROUNDING = 2.0


def main():
    method, views_dir, out = sys.argv[1:4]
    lr, pred_lr, wd = map(float, sys.argv[4:7])
    torch.set_num_threads(2)
    torch.manual_seed(4242)
    views = []
    while os.path.exists(os.path.join(views_dir, "view%d.npy" % len(views))):
        views.append(torch.from_numpy(np.load(os.path.join(views_dir, "view%d.npy" % len(views)))))
    setup = {"vicreg": vicreg_setup, "swav": swav_setup, "simsiam": simsiam_setup}[method]
    step = {"vicreg": vicreg_step, "swav": swav_step, "simsiam": simsiam_step}[method]
    model = setup(out)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    with open(os.path.join(out, "margin.json"), "w") as f:
        json.dump(kink_check(method, model, views), f)
    cases = [("none", {"with_e2mc": False}), ("e2mc", {"with_e2mc": True})]
    if method == "swav":
        cases.append(("none_frozen", {"with_e2mc": False, "frozen": True}))
    for name, kw in cases:
        model.load_state_dict(init)
        after, terms = step(model, views, lr, pred_lr, wd, **kw)
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        torch.save(after, os.path.join(d, "after.pth"))
        with open(os.path.join(d, "terms.json"), "w") as f:
            json.dump(terms, f)


if __name__ == "__main__":
    main()
