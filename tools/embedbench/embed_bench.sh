#!/usr/bin/env bash
# Times `e2mcvk embed` against PyTorch doing the same work on the same
# machine: a torchvision ResNet-50 (random weights) in eval mode over the
# first N Fashion-MNIST test images, each resized to 224 x 224 (bilinear),
# replicated to RGB, normalised, in batches of B. Both report images/s over
# the embedding loop alone (decode + preprocess + forward + copy back), not
# the model's start-up.
#
# Usage: tools/embedbench/embed_bench.sh [N] [B] [DEVICE]   (defaults 64 32 0)
# Needs tools/setup.sh's packages (Debian's PyTorch, dataset-fashion-mnist).
set -euo pipefail
n=${1:-64}
b=${2:-32}
device=${3:-0}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

/usr/bin/python3 - "$work" "$n" "$b" <<'PY'
import gzip, sys, time
import numpy as np, torch, torchvision
from PIL import Image
work, n, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(2)
torch.manual_seed(0)
model = torchvision.models.resnet50()
torch.save(model.state_dict(), work + "/resnet50.pth")
model.fc = torch.nn.Identity()
model.eval()
with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
    imgs = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
tf = torchvision.transforms.Compose([torchvision.transforms.Resize(224), torchvision.transforms.ToTensor(),
                                     torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
with torch.no_grad():
    model(torch.zeros(2, 3, 224, 224))  # warm-up
    t0 = time.perf_counter()
    for lo in range(0, n, b):
        x = torch.stack([tf(Image.fromarray(a).convert("RGB")) for a in imgs[lo:lo + b]])
        model(x).numpy()
    el = time.perf_counter() - t0
print("torch-cpu (%d threads): %d images in %.2f s: %.2f images/s" % (torch.get_num_threads(), n, el, n / el))
PY

cd "$root"
go build -o "$work/e2mcvk" ./cmd/e2mcvk
"$work/e2mcvk" embed --checkpoint "$work/resnet50.pth" --data fashion-mnist:test --limit "$b" \
  --resize 224 --crop 0 --batch-size "$b" --device "$device" --out "$work/warm.npy" 2>/dev/null # pipelines
"$work/e2mcvk" embed --checkpoint "$work/resnet50.pth" --data fashion-mnist:test --limit "$n" \
  --resize 224 --crop 0 --batch-size "$b" --device "$device" --out "$work/z.npy" 2>&1 | grep -E '^embed: [0-9]+ in '
