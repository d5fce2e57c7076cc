#!/usr/bin/python3
"""PyTorch references for the losses and row-wise ops of package layers
(layers/loss_test.go): F.cross_entropy, F.log_softmax, F.cosine_similarity,
F.normalize and F.mse_loss, forward and gradient, computed in float64 from
the float32 inputs the device sees.

Usage: torch_ops.py DIR
  DIR/cases.json: a list of {"name", "op", "shapes"}; op is one of OPS below.
  DIR/<name>.in<i>: input i, little-endian float32, row-major, shapes[i].
  DIR/<name>.labels: for cross_entropy, the class indices (little-endian int32).
  DIR/<name>.w: the output gradient (float32, the output's size).
Writes DIR/<name>.out (the output) and DIR/<name>.grad<i> (the gradient of
sum(w * out) with respect to input i), little-endian float64.
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

OPS = {
    "cross_entropy": lambda x, labels: F.cross_entropy(x[0], labels).reshape(1),
    "log_softmax": lambda x, _: F.log_softmax(x[0], dim=1),
    "cosine_similarity": lambda x, _: F.cosine_similarity(x[0], x[1], dim=1, eps=1e-8),
    "normalize": lambda x, _: F.normalize(x[0], p=2.0, dim=1, eps=1e-12),
    "mse": lambda x, _: F.mse_loss(x[0], x[1]).reshape(1),
}


def main():
    d = sys.argv[1]
    with open(os.path.join(d, "cases.json")) as f:
        cases = json.load(f)
    for c in cases:
        base = os.path.join(d, c["name"])
        xs = []
        for i, shape in enumerate(c["shapes"]):
            a = np.fromfile(f"{base}.in{i}", dtype="<f4").reshape(shape)
            xs.append(torch.tensor(a.astype(np.float64), requires_grad=True))
        labels = None
        if c["op"] == "cross_entropy":
            labels = torch.tensor(np.fromfile(f"{base}.labels", dtype="<i4").astype(np.int64))
        out = OPS[c["op"]](xs, labels)
        w = torch.tensor(np.fromfile(f"{base}.w", dtype="<f4").astype(np.float64)).reshape(out.shape)
        grads = torch.autograd.grad((w * out).sum(), xs)
        out.detach().numpy().astype("<f8").tofile(f"{base}.out")
        for i, g in enumerate(grads):
            g.numpy().astype("<f8").tofile(f"{base}.grad{i}")


if __name__ == "__main__":
    main()
