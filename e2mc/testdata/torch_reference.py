#!/usr/bin/python3
"""The authors' E2MC formulation in PyTorch (float64, autograd): the oracle the
Go reference and the device kernels are checked against.

Usage: torch_reference.py Z.npy BOUND EPS M OUTDIR
  BOUND: none | sigmoid | normal; M: 0 for round(sqrt(N)).
Writes OUTDIR/entropy.npy (D), grad_entropy.npy and grad_cov.npy (N x D:
gradients of the mean entropy and of the covariance loss with respect to Z)
and prints a JSON object {"mean_entropy": .., "cov_loss": ..}.

The sort is stable so that tied values are ordered by row, as the Go
reference and the device sort order them.
"""
import json
import math
import sys

import numpy as np
import torch


def bound(z, kind):
    if kind == "sigmoid":
        return torch.sigmoid(z)
    if kind == "normal":
        return 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return z


def m_spacings_estimator(x, m, eps):
    n = x.shape[0]
    x, _ = torch.sort(x, dim=0, stable=True)
    x = x[m:] - x[: n - m]
    x = x * (n + 1) / m
    return torch.log(x + eps).sum(dim=0) / (n - m)


def sample_cov_estimator(x):
    n, d = x.shape
    x = x - x.mean(dim=0)
    cov = (x.T @ x) / (n - 1)
    off = cov - torch.diag(cov.diagonal())
    return off.pow(2).sum().div(d)


def main():
    path, kind, eps, m, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    z = torch.tensor(np.load(path), dtype=torch.float64, requires_grad=True)
    n = z.shape[0]
    if m == 0:
        m = round(math.sqrt(n))
    x = bound(z, kind)
    ent = m_spacings_estimator(x, m, eps)
    mean_ent = ent.mean()
    cov = sample_cov_estimator(x)
    (g_ent,) = torch.autograd.grad(mean_ent, z, retain_graph=True)
    (g_cov,) = torch.autograd.grad(cov, z)
    np.save(out + "/entropy.npy", ent.detach().numpy())
    np.save(out + "/grad_entropy.npy", g_ent.numpy())
    np.save(out + "/grad_cov.npy", g_cov.numpy())
    print(json.dumps({"mean_entropy": mean_ent.item(), "cov_loss": cov.item(), "m": m}))


if __name__ == "__main__":
    main()
