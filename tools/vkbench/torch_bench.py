#!/usr/bin/python3
"""Times vkbench's cases with PyTorch, for comparison with e2mcvk's kernels.

Run it with Debian's /usr/bin/python3 (python3-torch); compare.sh runs it
beside `go run ./tools/vkbench` and prints the two side by side.

Cases (the same names and shapes as tools/vkbench):
  gemm  MxNxK   torch.mm(A[M,K], B[K,N], out=C), 2*M*N*K flops
  copy  RxC     dst.copy_(src) of R*C float32, 2*4*R*C bytes (read + write)
  fma           skipped: PyTorch has no peak-FMA microkernel; the largest
                GEMM is its practical peak.
  e2mc_*  NxD   the authors' E2MC formulation (sigmoid bound) on one view,
                float32: e2mc_fwd the criterion forward, e2mc_sort the
                torch.sort + log-spacings forward, e2mc_total forward +
                backward, e2mc_entropy sort + entropy forward + backward,
                e2mc_cov covariance loss forward + backward; GB/s counts the
                embeddings once (4*N*D bytes), as vkbench does.
  conv_fwd, conv_bwd_data, conv_bwd_weight  NxCinxHxW-CoutxKHxKW-sSpP
                F.conv2d, torch.nn.grad.conv2d_input and conv2d_weight
                (aten.convolution_backward, as autograd runs them), no
                bias, 2*N*Cout*Ho*Wo*Cin*KH*KW flops.
  bn_fwd, bn_train  NxC[xHxW]  F.batch_norm in training mode (affine,
                running statistics updated); bn_train adds the backward
                (dx, dweight, dbias) from a given output gradient.
  resnet_step  rD-Nx3xSxS  one training step of torchvision's ResNet-D, 10
                classes: zero_grad, forward (train mode), cross-entropy,
                backward, SGD (lr 0.01, momentum 0.9, weight decay 1e-4).

Each case runs --warmup times untimed, then --repeat times; the median is
reported. On the CPU the wall clock times each run (torch.set_num_threads is
the number of cores unless --threads); with --cuda, CUDA events do. With
--json each case is one JSON object per line, the schema of vkbench --json
plus "impl": "torch-cpu" or "torch-cuda".
"""

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time

try:
    import torch
except ImportError:
    sys.exit("torch_bench.py: PyTorch is not installed for %s; run it with "
             "/usr/bin/python3 after tools/setup.sh (python3-torch)" % sys.executable)

GEMM_SHAPES = [(256, 256, 256), (1024, 1024, 1024), (2048, 2048, 2048), (3136, 256, 64), (8, 8192, 8192)]
COPY_SHAPES = [(4096, 4096)]
E2MC_SHAPES = [(512, 8192), (256, 128), (4096, 2048)]
# The convolution shapes of tools/vkbench/cases_conv.go.
CONV_SHAPES = ["8x3x224x224-64x7x7-s2p3", "8x64x56x56-64x1x1-s1p0", "8x64x56x56-64x3x3-s1p1",
               "8x64x56x56-256x1x1-s1p0", "8x128x56x56-128x3x3-s2p1", "8x256x14x14-256x3x3-s1p1",
               "8x512x7x7-512x3x3-s1p1", "8x1024x14x14-256x1x1-s1p0", "8x512x7x7-2048x1x1-s1p0",
               "8x1024x14x14-2048x1x1-s2p0", "64x64x32x32-64x3x3-s1p1"]


def m_spacings(x):
    """Mean over columns of the m-spacing entropy (the authors' estimator)."""
    n = x.shape[0]
    m = round(n ** 0.5)
    x, _ = torch.sort(x, dim=0)
    x = (x[m:] - x[: n - m]) * (n + 1) / m
    return (torch.log(x + 1e-7).sum(dim=0) / (n - m)).mean()


def cov_loss(x):
    n, d = x.shape
    x = x - x.mean(dim=0)
    c = (x.T @ x) / (n - 1)
    return (c - torch.diag(c.diagonal())).pow(2).sum().div(d)


def e2mc_calls(z):
    """The timed calls of the e2mc cases on embeddings z, by case name."""
    def backward(loss_fn):
        def call():
            with torch.enable_grad():
                zz = z.detach().requires_grad_()
                loss_fn(zz).backward()
        return call

    def entropy(zz):
        return m_spacings(torch.sigmoid(zz))

    def covariance(zz):
        return cov_loss(torch.sigmoid(zz))

    def total(zz):
        x = torch.sigmoid(zz)
        return cov_loss(x) - 5 * m_spacings(x)

    return {
        "e2mc_fwd": lambda: total(z),
        "e2mc_sort": lambda: entropy(z),
        "e2mc_total": backward(total),
        "e2mc_entropy": backward(entropy),
        "e2mc_cov": backward(covariance),
    }


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


class Timer:
    """Times one call of fn on the chosen device."""

    def __init__(self, device):
        self.device = device

    def __call__(self, fn):
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def cases(device):
    """Yields (name, shape, flops, bytes, make) where make() returns the call."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (torch.rand(*shape, generator=gen) * 2 - 1).to(device)

    for m, n, k in GEMM_SHAPES:
        def make(m=m, n=n, k=k):
            a, b, c = rand(m, k), rand(k, n), torch.zeros(m, n, device=device)
            return lambda: torch.mm(a, b, out=c)
        yield "gemm", "%dx%dx%d" % (m, n, k), 2.0 * m * n * k, 0.0, make
    for r, c in COPY_SHAPES:
        def make(r=r, c=c):
            src, dst = rand(r, c), torch.zeros(r, c, device=device)
            return lambda: dst.copy_(src)
        yield "copy", "%dx%d" % (r, c), 0.0, 2.0 * 4 * r * c, make
    for n, d in E2MC_SHAPES:
        for case in ("e2mc_fwd", "e2mc_sort", "e2mc_total", "e2mc_entropy", "e2mc_cov"):
            def make(n=n, d=d, case=case):
                return e2mc_calls(torch.randn(n, d, generator=gen).to(device))[case]
            yield case, "%dx%d" % (n, d), 0.0, 4.0 * n * d, make
    for shape in CONV_SHAPES:
        n, cin, h, w, cout, kh, kw, st, pad = map(int, re.findall(r"\d+", shape))
        ho, wo = (h + 2 * pad - kh) // st + 1, (w + 2 * pad - kw) // st + 1
        flops = 2.0 * n * cout * ho * wo * cin * kh * kw
        for case in ("conv_fwd", "conv_bwd_data", "conv_bwd_weight"):
            def make(n=n, cin=cin, h=h, w=w, cout=cout, kh=kh, kw=kw, st=st, pad=pad, ho=ho, wo=wo, case=case):
                x, wt, g = rand(n, cin, h, w), rand(cout, cin, kh, kw), rand(n, cout, ho, wo)
                if case == "conv_fwd":
                    return lambda: torch.nn.functional.conv2d(x, wt, stride=st, padding=pad)
                if case == "conv_bwd_data":
                    return lambda: torch.nn.grad.conv2d_input(x.shape, wt, g, stride=st, padding=pad)
                return lambda: torch.nn.grad.conv2d_weight(x, wt.shape, g, stride=st, padding=pad)
            yield case, shape, flops, 0.0, make
    for shape in BN_SHAPES:
        n = 1
        for v in shape:
            n *= v
        for case, nbytes in (("bn_fwd", 8.0 * n), ("bn_train", 20.0 * n)):
            def make(shape=shape, case=case):
                return bn_call(rand(*shape), rand(*shape), case == "bn_train")
            yield case, "x".join(map(str, shape)), 0.0, nbytes, make
    for depth, batch, size in RESNET_STEPS:
        def make(depth=depth, batch=batch, size=size):
            return resnet_step_call(depth, batch, size, device, gen)
        yield "resnet_step", "r%d-%dx3x%dx%d" % (depth, batch, size, size), 0.0, 0.0, make


# The shapes of tools/vkbench/cases_bn.go and cases_resnet.go.
BN_SHAPES = [(8, 256, 56, 56), (8, 2048, 7, 7), (64, 64, 32, 32), (512, 8192)]
RESNET_STEPS = [(18, 64, 32), (50, 8, 224)]


def bn_call(x, dy, backward):
    c = x.shape[1]
    w = torch.ones(c, device=x.device, requires_grad=backward)
    b = torch.zeros(c, device=x.device, requires_grad=backward)
    rm, rv = torch.zeros(c, device=x.device), torch.ones(c, device=x.device)
    xx = x.detach().requires_grad_(backward)

    def call():
        with torch.enable_grad():
            y = torch.nn.functional.batch_norm(xx, rm, rv, w, b, training=True, momentum=0.1)
            if backward:
                torch.autograd.grad(y, (xx, w, b), dy)
    return call


def resnet_step_call(depth, batch, size, device, gen):
    import torchvision
    torch.manual_seed(depth)
    model = getattr(torchvision.models, "resnet%d" % depth)(num_classes=10).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)

    def call():
        with torch.enable_grad():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return call


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--filter", default="", metavar="REGEX",
                   help="run only the cases whose name/shape matches REGEX")
    p.add_argument("--repeat", type=int, default=7, help="timed runs per case (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per case first")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="CPU threads (default: the number of cores, %(default)s)")
    p.add_argument("--cuda", action="store_true", help="run on the first CUDA device")
    p.add_argument("--tf32", action="store_true",
                   help="let CUDA matmuls and cuDNN convolutions use TF32 (off by default: e2mcvk "
                        "computes in float32, so the comparison is float32 against float32)")
    p.add_argument("--json", action="store_true", help="print one JSON object per case and line")
    args = p.parse_args()
    if args.repeat < 1 or args.warmup < 0:
        p.error("--repeat must be at least 1 and --warmup at least 0")
    try:
        pattern = re.compile(args.filter)
    except re.error as e:
        p.error("--filter: %s" % e)

    if args.cuda:
        if not torch.cuda.is_available():
            sys.exit("torch_bench.py: --cuda, but torch.cuda.is_available() is False")
        device = torch.device("cuda")
        impl = "torch-cuda"
        name = torch.cuda.get_device_name(device)
        driver = "CUDA %s, torch %s, TF32 %s" % (torch.version.cuda, torch.__version__,
                                                 "on" if args.tf32 else "off")
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(args.threads)
        device = torch.device("cpu")
        impl = "torch-cpu"
        name = cpu_name()
        driver = "torch %s, %d threads" % (torch.__version__, torch.get_num_threads())
    timer = Timer(device)

    if not args.json:
        print("%s: %s; median of %d runs" % (impl, name, args.repeat))
        print("%-13s %-18s %12s %10s %10s" % ("CASE", "SHAPE", "SECONDS", "GFLOP/S", "GB/S"))
    with torch.no_grad():
        for case, shape, flops, nbytes, make in cases(device):
            if not pattern.search(case + "/" + shape):
                continue
            fn = make()
            for _ in range(args.warmup):
                timer(fn)
            sec = statistics.median(timer(fn) for _ in range(args.repeat))
            row = {"name": case, "shape": shape, "seconds": sec}
            if flops:
                row["gflops"] = flops / sec / 1e9
            if nbytes:
                row["gbps"] = nbytes / sec / 1e9
            row.update({"device": name, "driver": driver, "impl": impl,
                        "timer": "cuda-events" if args.cuda else "host", "repeats": args.repeat})
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                fmt = lambda v: "%.2f" % v if v else "-"
                print("%-13s %-18s %12.6f %10s %10s" % (case, shape, sec, fmt(row.get("gflops")),
                                                        fmt(row.get("gbps"))), flush=True)


if __name__ == "__main__":
    main()
