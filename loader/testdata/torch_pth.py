"""PyTorch oracle of the .pth tests (loader/pth_test.go, pth_write_test.go).

usage: torch_pth.py fixtures OUTDIR
       torch_pth.py vicreg OUTDIR   (only the vicreg_* files, added to OUTDIR/manifest.json)
       torch_pth.py check DIR

fixtures: writes the committed fixtures of loader/testdata/pth/ with torch.save
(seeded, so the values are the same on every run; legacy files name their
storages by memory address, so their bytes differ):
  state_dict_{zip,legacy}.pth  an OrderedDict of float32, float16 (with inf,
                               nan, subnormal and -0), bfloat16, float64,
                               int64 and bool tensors, 0-d tensors, a
                               transposed and a sliced (offset, strided) view
                               saved as is, two tensors sharing one storage
                               and an empty tensor
  checkpoint_{zip,legacy}.pth  a full training checkpoint: epoch, arch, the
                               model's state dict, an SGD optimizer's state
                               after one step ({"state": {0: {...}}, ...}),
                               an nn.Parameter, a torch.Size, a dtype, None,
                               a tuple, a large and a negative int, bytes
  hostile_{zip,legacy}.pth     torch.save of an object whose __reduce__ is
  hostile_pickle.pkl           (os.system, ("echo pwned",)); the .pkl is
                               pickle.dump (protocol 4: STACK_GLOBAL)
  vicreg_{zip,legacy}.pth      a checkpoint as VICReg's main_vicreg.py saves
                               it: its LARS keeps the function
                               exclude_bias_and_norm (defined in __main__) in
                               the optimizer's param groups; loaded as the
                               string "global:__main__.exclude_bias_and_norm"
  checkpoint_zip_truncated.pth the zip checkpoint cut at 60%
  checkpoint_legacy_truncated.pth   the legacy one cut at 60%
and manifest.json: for each file what loading must give, as a tree of
  {"dict": [[key, node], ...], "ordered": bool}, {"list": [...]},
  {"str": s}, {"bytes": hex (loaded as a string)}, {"int": n}, {"float": x}, {"bool": b}, {"none": true},
  {"tensor": {"shape": [...], "bits": [float32 bits of t.float()]}} or
  {"tensor": {"shape": [...], "ints": [...]}} for integer and bool tensors,
or {"refused": "module.name"} or {"error": true}; and "resnet18": the
state-dict names, shapes and dtypes of torchvision's resnet18(num_classes=10).

check: for every DIR/NAME.json, loads DIR/NAME.pth (written by WritePth) with
torch.load and compares it with the expected tree in the same form (int keys
as JSON ints; a tensor may give "sha256" of its float32 or int64 bytes instead
of "bits"/"ints"; "dtype" is float32 or int64). With "weights_only": true the
file is also loaded with torch.load(weights_only=True); with "resnet18": true
the loaded state dict must go into torchvision's resnet18(num_classes=10)
with load_state_dict(strict=True). Prints "ok NAME" for each file.
"""
import collections
import hashlib
import json
import os
import pickle
import sys

import numpy as np
import torch


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def encode(v):
    """The expected-value tree of v, as the Go loader must return it."""
    if isinstance(v, torch.Tensor):
        t = v.detach()
        shape = list(t.shape)
        if t.dtype in (torch.int64, torch.int32, torch.uint8, torch.bool):
            return {"tensor": {"shape": shape, "ints": t.to(torch.int64).reshape(-1).tolist()}}
        bits = t.to(torch.float32).contiguous().reshape(-1).numpy().view(np.uint32)
        return {"tensor": {"shape": shape, "bits": [int(b) for b in bits]}}
    if isinstance(v, dict):
        return {"dict": [[str(k), encode(x)] for k, x in v.items()],
                "ordered": isinstance(v, collections.OrderedDict)}
    if isinstance(v, (list, tuple)):  # torch.Size is a tuple
        return {"list": [encode(x) for x in v]}
    if isinstance(v, bool):
        return {"bool": v}
    if isinstance(v, int):
        return {"int": v}
    if isinstance(v, float):
        return {"float": v}
    if isinstance(v, str):
        return {"str": v}
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, torch.dtype):
        return {"str": str(v)}
    if v is None:
        return {"none": True}
    if callable(v) and hasattr(v, "__qualname__"):
        return {"str": "global:%s.%s" % (v.__module__, v.__qualname__)}
    raise TypeError(type(v))


def state_dict():
    g = torch.Generator().manual_seed(1)
    sd = collections.OrderedDict()
    sd["w32"] = torch.randn(3, 4, generator=g)
    sd["w16"] = torch.cat([torch.randn(5, generator=g) * 100,
                           torch.tensor([float("inf"), -float("inf"), float("nan"), 6e-8, 65504.0, -0.0])]).half()
    sd["wbf16"] = torch.randn(2, 3, generator=g).bfloat16()
    sd["w64"] = torch.randn(4, generator=g).double() / 3
    sd["num_batches_tracked"] = torch.tensor(123457)
    sd["i64"] = torch.tensor([-7, 0, 1 << 40, 99], dtype=torch.int64)
    sd["mask"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.randn((), generator=g)
    sd["transposed"] = torch.randn(3, 5, generator=g).t()
    sd["sliced"] = torch.randn(4, 6, generator=g)[1:3, ::2]
    base = torch.randn(10, generator=g)
    sd["shared_a"] = base[:4]
    sd["shared_b"] = base[4:].view(2, 3)
    sd["empty"] = torch.zeros(0, 3)
    return sd


def checkpoint():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
    model(torch.randn(2, 1, 5, 5)).square().mean().backward()
    opt.step()
    return {
        "epoch": 3,
        "arch": "resnet50",
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "param": torch.nn.Parameter(torch.randn(2)),
        "size": torch.Size([2, 3]),
        "dtype": torch.float16,
        "best": None,
        "tuple": (1, 2.5, "x", True),
        "big": 1 << 40,
        "neg": -3,
        "bytes": b"abc\xff",
    }


def exclude_bias_and_norm(p):
    """VICReg's LARS filter (main_vicreg.py), pickled by reference."""
    return p.ndim == 1


def vicreg_checkpoint():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for g in opt.param_groups:  # what VICReg's LARS keeps in its defaults
        g["weight_decay_filter"] = exclude_bias_and_norm
        g["lars_adaptation_filter"] = exclude_bias_and_norm
    model(torch.randn(4, 6)).square().mean().backward()
    opt.step()
    return {"epoch": 100, "model": model.state_dict(), "optimizer": opt.state_dict()}


def vicreg_fixtures(out, manifest):
    obj = vicreg_checkpoint()
    torch.save(obj, os.path.join(out, "vicreg_zip.pth"))
    torch.save(obj, os.path.join(out, "vicreg_legacy.pth"), _use_new_zipfile_serialization=False)
    manifest["files"]["vicreg_zip.pth"] = encode(obj)
    manifest["files"]["vicreg_legacy.pth"] = encode(obj)


def fixtures(out):
    os.makedirs(out, exist_ok=True)
    manifest = {"files": {}}
    for name, obj in [("state_dict", state_dict()), ("checkpoint", checkpoint())]:
        torch.save(obj, os.path.join(out, name + "_zip.pth"))
        torch.save(obj, os.path.join(out, name + "_legacy.pth"), _use_new_zipfile_serialization=False)
        manifest["files"][name + "_zip.pth"] = encode(obj)
        manifest["files"][name + "_legacy.pth"] = encode(obj)
    vicreg_fixtures(out, manifest)
    hostile = {"model": collections.OrderedDict(w=torch.ones(2)), "x": Evil()}
    torch.save(hostile, os.path.join(out, "hostile_zip.pth"))
    torch.save(hostile, os.path.join(out, "hostile_legacy.pth"), _use_new_zipfile_serialization=False)
    with open(os.path.join(out, "hostile_pickle.pkl"), "wb") as f:
        pickle.dump({"epoch": 1, "x": Evil()}, f, protocol=4)
    for name in ["hostile_zip.pth", "hostile_legacy.pth", "hostile_pickle.pkl"]:
        manifest["files"][name] = {"refused": os.system.__module__ + ".system"}
    for name in ["checkpoint_zip", "checkpoint_legacy"]:
        with open(os.path.join(out, name + ".pth"), "rb") as f:
            raw = f.read()
        with open(os.path.join(out, name + "_truncated.pth"), "wb") as f:
            f.write(raw[: len(raw) * 6 // 10])
        manifest["files"][name + "_truncated.pth"] = {"error": True}
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    manifest["resnet18"] = [[k, list(v.shape), str(v.dtype).replace("torch.", "")]
                            for k, v in model.state_dict().items()]
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, separators=(",", ":"))
        f.write("\n")


def fail(where, msg):
    raise SystemExit("%s: %s" % (where or "root", msg))


def compare(got, want, where):
    if "dict" in want:
        if not isinstance(got, dict):
            fail(where, "a dict expected, got %s" % type(got).__name__)
        if want.get("ordered") and not isinstance(got, collections.OrderedDict):
            fail(where, "an OrderedDict expected, got %s" % type(got).__name__)
        keys = [k for k, _ in want["dict"]]
        if list(got.keys()) != keys:
            fail(where, "keys %r, want %r" % (list(got.keys())[:8], keys[:8]))
        for k, node in want["dict"]:
            compare(got[k], node, "%s.%s" % (where, k) if where else str(k))
    elif "list" in want:
        if not isinstance(got, list) or len(got) != len(want["list"]):
            fail(where, "a list of %d expected, got %r" % (len(want["list"]), got))
        for i, node in enumerate(want["list"]):
            compare(got[i], node, "%s[%d]" % (where, i))
    elif "tensor" in want:
        w = want["tensor"]
        if not isinstance(got, torch.Tensor):
            fail(where, "a tensor expected, got %s" % type(got).__name__)
        dt = {"float32": torch.float32, "int64": torch.int64}[w["dtype"]]
        if got.dtype != dt or list(got.shape) != w["shape"]:
            fail(where, "tensor %s %s, want %s %s" % (got.dtype, list(got.shape), w["dtype"], w["shape"]))
        raw = got.contiguous().reshape(-1).numpy()
        if "sha256" in w:
            if hashlib.sha256(raw.tobytes()).hexdigest() != w["sha256"]:
                fail(where, "values differ (sha256)")
        elif "bits" in w:
            if raw.view(np.uint32).tolist() != w["bits"]:
                fail(where, "values %r, want bits %r" % (raw.tolist()[:6], w["bits"][:6]))
        elif raw.tolist() != w["ints"]:
            fail(where, "values %r, want %r" % (raw.tolist()[:6], w["ints"][:6]))
    else:
        (kind, value), = [(k, v) for k, v in want.items()]
        types = {"str": str, "int": int, "float": float, "bool": bool, "none": type(None)}
        if type(got) is not types[kind] or (kind != "none" and got != value):
            fail(where, "%r, want %s %r" % (got, kind, value))


def check(d):
    for name in sorted(os.listdir(d)):
        if not name.endswith(".json"):
            continue
        base = os.path.join(d, name[:-5])
        with open(base + ".json") as f:
            want = json.load(f)
        obj = torch.load(base + ".pth")
        compare(obj, want["expect"], "")
        if want.get("weights_only"):
            compare(torch.load(base + ".pth", weights_only=True), want["expect"], "")
        if want.get("resnet18"):
            import torchvision

            torchvision.models.resnet18(num_classes=10).load_state_dict(obj, strict=True)
        print("ok", name[:-5])


def main():
    torch.set_num_threads(1)
    if sys.argv[1] == "fixtures":
        fixtures(sys.argv[2])
    elif sys.argv[1] == "vicreg":
        path = os.path.join(sys.argv[2], "manifest.json")
        with open(path) as f:
            manifest = json.load(f)
        vicreg_fixtures(sys.argv[2], manifest)
        with open(path, "w") as f:
            json.dump(manifest, f, separators=(",", ":"))
            f.write("\n")
    elif sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
