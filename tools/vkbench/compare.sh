#!/usr/bin/env bash
# Runs vkbench and, where Debian's PyTorch is installed, torch_bench.py on the
# same cases, and prints them side by side: seconds, GFLOP/s or GB/s, and the
# ratio of torch's time to e2mcvk's (of e2mcvk's rate to torch's): above 1
# means e2mcvk is faster.
#
# Usage: tools/vkbench/compare.sh [--device N] [--filter REGEX] [--repeat R]
#                                 [--threads T] [--cuda]
#   --device   Vulkan device index for vkbench (default 0)
#   --filter   run only the cases whose name/shape matches REGEX (both sides)
#   --repeat   timed runs per case, median reported (both sides; default 7)
#   --threads  PyTorch CPU threads (default: the number of cores)
#   --cuda     time PyTorch on CUDA instead of the CPU
#
# Environment: VKBENCH names a vkbench binary built beforehand (for a machine
# without Go); PYTHON the interpreter that has PyTorch (default
# /usr/bin/python3, Debian's).
#
# The exit status is vkbench's: non-zero when any e2mcvk case failed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-/usr/bin/python3}

vk_args=(--json)
torch_args=(--json)
while (($#)); do
  case "$1" in
    --device | -d) vk_args+=(--device "$2"); shift 2 ;;
    --filter | -f) vk_args+=(--filter "$2"); torch_args+=(--filter "$2"); shift 2 ;;
    --repeat | -r) vk_args+=(--repeat "$2"); torch_args+=(--repeat "$2"); shift 2 ;;
    --threads) torch_args+=(--threads "$2"); shift 2 ;;
    --cuda) torch_args+=(--cuda); shift ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ -n "${VKBENCH:-}" ]; then
  cp "$VKBENCH" "$tmp/vkbench"
else
  (cd "$root" && go build -o "$tmp/vkbench" ./tools/vkbench)
fi
list_args=(--list)
for ((i = 0; i < ${#torch_args[@]}; i++)); do
  if [ "${torch_args[i]}" = --filter ]; then list_args+=(--filter "${torch_args[i + 1]}"); fi
done
"$tmp/vkbench" "${list_args[@]}" >"$tmp/cases.txt"

echo "== vkbench ${vk_args[*]}" >&2
status=0
"$tmp/vkbench" "${vk_args[@]}" >"$tmp/e2mcvk.jsonl" || status=$?

if "$python" -c 'import torch' 2>/dev/null; then
  echo "== torch_bench.py ${torch_args[*]}" >&2
  "$python" "$here/torch_bench.py" "${torch_args[@]}" >"$tmp/torch.jsonl"
else
  echo "== PyTorch is not installed for $python (tools/setup.sh installs python3-torch): e2mcvk only" >&2
  : >"$tmp/torch.jsonl"
fi

"$python" - "$tmp/cases.txt" "$tmp/e2mcvk.jsonl" "$tmp/torch.jsonl" <<'PY'
import json, sys

def load(path):
    rows = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                rows[(r["name"], r["shape"])] = r
    return rows

with open(sys.argv[1]) as f:
    keys = [tuple(line.strip().split("/", 1)) for line in f if "/" in line]
ours, theirs = load(sys.argv[2]), load(sys.argv[3])
for k in list(ours) + list(theirs):  # rows --list does not name (a case's parts)
    if k not in keys:
        keys.append(k)

def figure(r):
    if r is None:
        return None, ""
    if r.get("gflops"):
        return r["gflops"], "GFLOP/s"
    if r.get("gbps"):
        return r["gbps"], "GB/s"
    return None, ""

def describe(rows):
    seen = sorted({"%s (%s; %s)" % (r.get("device"), r.get("impl"), r.get("driver")) for r in rows.values()})
    return ", ".join(seen) or "none"

print("e2mcvk: " + describe(ours))
print("torch:  " + describe(theirs))
def seconds(r):
    return "%.6f" % r["seconds"] if r else "-"

# RATIO is torch's time over e2mcvk's (the same as the ratio of the rates):
# above 1 means e2mcvk is faster.
fmt = "%-13s %-16s %12s %12s %8s %10s %10s %8s"
print(fmt % ("CASE", "SHAPE", "E2MCVK s", "TORCH s", "UNIT", "E2MCVK", "TORCH", "RATIO"))
for k in keys:
    ra, rb = ours.get(k), theirs.get(k)
    a, unit_a = figure(ra)
    b, unit_b = figure(rb)
    ratio = "%.3f" % (rb["seconds"] / ra["seconds"]) if ra and rb else "-"
    print(fmt % (k[0], k[1], seconds(ra), seconds(rb), unit_a or unit_b,
                 "%.2f" % a if a else "-", "%.2f" % b if b else "-", ratio))
PY
exit "$status"
