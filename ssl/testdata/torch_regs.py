#!/usr/bin/python3
"""The Table-2 baselines MMCR and AUH uniformity in PyTorch (float64, autograd):
the oracle ssl's host computations are checked against.

Usage: torch_regs.py OUTDIR
OUTDIR/cases.json lists the cases: [{"name", "kind": "mmcr" | "auh", "t", "path"}],
path an .npy array Z of shape [V, N, D] (V views of N samples). For each case
it writes OUTDIR/<name>_grad.npy (the gradient of the loss with respect to Z,
[V, N, D]) and prints one JSON object {name: loss}.

MMCR (Yerxa et al. 2023; the E2MC authors' main_swav_mmcr_ft.py): minus the
nuclear norm of the per-sample centroids over the views of the L2-normalised
rows. AUH (Wang & Isola 2020, align_uniform's uniform_loss): the mean over the
views of log(mean over pairs i<j of exp(-t |y_i - y_j|^2)), y L2-normalised.
"""
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F


def mmcr(z):
    y = F.normalize(z, dim=-1)
    c = y.mean(dim=0)
    return -torch.linalg.matrix_norm(c, ord="nuc")


def auh(z, t):
    y = F.normalize(z, dim=-1)
    per_view = [torch.pdist(y[v], p=2).pow(2).mul(-t).exp().mean().log() for v in range(y.shape[0])]
    return torch.stack(per_view).mean()


def main():
    out = sys.argv[1]
    with open(out + "/cases.json") as f:
        cases = json.load(f)
    result = {}
    for c in cases:
        z = torch.tensor(np.load(c["path"]), dtype=torch.float64, requires_grad=True)
        loss = mmcr(z) if c["kind"] == "mmcr" else auh(z, c["t"])
        (g,) = torch.autograd.grad(loss, z)
        np.save(out + "/" + c["name"] + "_grad.npy", g.numpy())
        result[c["name"]] = loss.item()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
