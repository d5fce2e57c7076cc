"""Oracle of eval/linear_test.go: the linear probe's SGD steps in PyTorch.

Reads DIR/in.json: d, classes, bn (bool), w0 (classes x d), b0, lrs, wd,
momentum, batches (list of {x: n x d, y: n}); runs
[BatchNorm1d(d) (training mode) ->] Linear(d, classes) with
torch.optim.SGD(all parameters, momentum, weight_decay) one step per batch
at the given learning rates, in float64, and writes DIR/out.json: the losses,
w, b, and with BN gamma, beta, running_mean, running_var, and the eval-mode
logits of the first batch.
"""
import json
import os
import sys

import torch

d = sys.argv[1]
with open(os.path.join(d, "in.json")) as f:
    cfg = json.load(f)
torch.set_default_dtype(torch.float64)
lin = torch.nn.Linear(cfg["d"], cfg["classes"])
with torch.no_grad():
    lin.weight.copy_(torch.tensor(cfg["w0"]))
    lin.bias.copy_(torch.tensor(cfg["b0"]))
mods = [lin]
if cfg["bn"]:
    bn = torch.nn.BatchNorm1d(cfg["d"])
    mods = [bn, lin]
model = torch.nn.Sequential(*mods)
opt = torch.optim.SGD(model.parameters(), lr=cfg["lrs"][0], momentum=cfg["momentum"], weight_decay=cfg["wd"])
losses = []
model.train()
for lr, batch in zip(cfg["lrs"], cfg["batches"]):
    for g in opt.param_groups:
        g["lr"] = lr
    x = torch.tensor(batch["x"])
    y = torch.tensor(batch["y"])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
model.eval()
out = {"losses": losses, "w": lin.weight.tolist(), "b": lin.bias.tolist()}
with torch.no_grad():
    out["logits"] = model(torch.tensor(cfg["batches"][0]["x"])).tolist()
if cfg["bn"]:
    out.update(gamma=bn.weight.tolist(), beta=bn.bias.tolist(), running_mean=bn.running_mean.tolist(), running_var=bn.running_var.tolist())
with open(os.path.join(d, "out.json"), "w") as f:
    json.dump(out, f)
