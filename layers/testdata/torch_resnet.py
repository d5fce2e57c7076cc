"""PyTorch oracle of the ResNet tests: a torchvision ResNet's train-mode
forward and backward on a random batch.

usage: torch_resnet.py OUTDIR DEPTH BATCH SIZE CLASSES
       torch_resnet.py --names CLASSES DEPTH...

With --names it prints, for each depth, torchvision's state-dict names and
shapes in state order as JSON ({"50": [[name, shape], ...], ...}) and exits.

Writes raw little-endian float32 files into OUTDIR and a manifest.json naming
them with their shapes:
  init/<name>   the state dict before the step (parameters, running stats;
                the batch norms' affine parameters and running statistics are
                randomised so that they are tested)
  x, labels     the input batch [N, 3, SIZE, SIZE] and class indices
  logits, loss  the forward pass (cross-entropy, mean over the batch)
  grad/<name>   the gradient of every parameter
  after/<name>  the running statistics after the step
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torchvision


def names(classes, depths):
    out = {}
    for depth in depths:
        model = getattr(torchvision.models, "resnet%d" % depth)(num_classes=classes)
        out[str(depth)] = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    json.dump(out, sys.stdout)


def main():
    if sys.argv[1] == "--names":
        names(int(sys.argv[2]), [int(d) for d in sys.argv[3:]])
        return
    out, depth, batch, size, classes = sys.argv[1], *map(int, sys.argv[2:6])
    torch.manual_seed(depth * 1000 + size)
    torch.set_num_threads(2)
    model = getattr(torchvision.models, "resnet%d" % depth)(num_classes=classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    manifest = {}

    def save(name, t):
        a = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4"))
        path = os.path.join(out, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        a.tofile(path)
        manifest[name] = list(a.shape)

    for name, t in model.state_dict().items():
        save("init/" + name, t.float())
    x = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, classes, (batch,))
    save("x", x)
    save("labels", labels.float())
    model.train()
    logits = model(x)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    save("logits", logits)
    save("loss", loss.reshape(1))
    for name, p in model.named_parameters():
        save("grad/" + name, p.grad)
    for name, t in model.state_dict().items():
        if "running" in name or "num_batches" in name:
            save("after/" + name, t.float())
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f)


if __name__ == "__main__":
    main()
