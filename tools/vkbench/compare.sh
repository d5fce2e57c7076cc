#!/usr/bin/env bash
# Runs vkbench and, where Debian's PyTorch is installed, torch_bench.py on the
# same cases, and prints them side by side: seconds, GFLOP/s or GB/s, and the
# ratio of torch's time to e2mcvk's (of e2mcvk's rate to torch's): above 1
# means e2mcvk is faster.
#
# Usage: tools/vkbench/compare.sh [--device N] [--filter REGEX] [--repeat R]
#                                 [--rounds K] [--threads T] [--cuda]
#   --device   Vulkan device index for vkbench (default 0)
#   --filter   run only the cases whose name/shape matches REGEX (both sides)
#   --repeat   timed runs per case, median reported (both sides; default 7)
#   --rounds   run both sides K times, alternating, and report each case's
#              median over the rounds, with the range of the rounds' ratios
#              (default 1). Noisy machines and GPU clocks move both sides
#              between calls; alternating rounds expose that.
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
rounds=1
while (($#)); do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
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

if ! [[ $rounds =~ ^[1-9][0-9]*$ ]]; then
  echo "compare.sh: --rounds $rounds: want a positive whole number" >&2
  exit 2
fi
torch=1
if ! "$python" -c 'import torch' 2>/dev/null; then
  echo "== PyTorch is not installed for $python (tools/setup.sh installs python3-torch): e2mcvk only" >&2
  torch=0
fi
status=0
: >"$tmp/e2mcvk.jsonl"
: >"$tmp/torch.jsonl"
for ((round = 1; round <= rounds; round++)); do
  # Each line gets its round, so that the ratios pair runs of one round.
  echo "== round $round/$rounds: vkbench ${vk_args[*]}" >&2
  "$tmp/vkbench" "${vk_args[@]}" | sed "s/^{/{\"round\":$round,/" >>"$tmp/e2mcvk.jsonl" || status=$?
  if ((torch)); then
    echo "== round $round/$rounds: torch_bench.py ${torch_args[*]}" >&2
    "$python" "$here/torch_bench.py" "${torch_args[@]}" | sed "s/^{/{\"round\":$round,/" >>"$tmp/torch.jsonl"
  fi
done

"$python" - "$tmp/cases.txt" "$tmp/e2mcvk.jsonl" "$tmp/torch.jsonl" <<'PY'
import json, sys

def load(path):
    """Each case's rows, one per round."""
    rows = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                rows.setdefault((r["name"], r["shape"]), []).append(r)
    return rows

def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

def merged(rs):
    """One row for a case: the median seconds over the rounds, its rate
    scaled to match."""
    if not rs:
        return None
    r = dict(rs[0])
    r["seconds"] = median([x["seconds"] for x in rs])
    for key in ("gflops", "gbps"):
        if r.get(key):
            r[key] = rs[0][key] * rs[0]["seconds"] / r["seconds"]
    return r

with open(sys.argv[1]) as f:
    keys = [tuple(line.strip().split("/", 1)) for line in f if "/" in line]
ours_rounds, theirs_rounds = load(sys.argv[2]), load(sys.argv[3])
ours = {k: merged(v) for k, v in ours_rounds.items()}
theirs = {k: merged(v) for k, v in theirs_rounds.items()}
for k in list(ours) + list(theirs):  # rows --list does not name (a case's parts)
    if k not in keys:
        keys.append(k)
rounds = max([len(v) for v in list(ours_rounds.values()) + list(theirs_rounds.values())] or [1])

def ratio_range(k):
    """The lowest and highest ratio of runs of the same round."""
    a = {r.get("round"): r["seconds"] for r in ours_rounds.get(k, [])}
    b = {r.get("round"): r["seconds"] for r in theirs_rounds.get(k, [])}
    rs = [b[i] / a[i] for i in a if i in b]
    return "%.3f-%.3f" % (min(rs), max(rs)) if rs else "-"

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
if rounds > 1:
    print("medians over %d alternating rounds; ROUNDS is the range of the rounds' ratios" % rounds)
def seconds(r):
    return "%.6f" % r["seconds"] if r else "-"

# RATIO is torch's time over e2mcvk's (the same as the ratio of the rates):
# above 1 means e2mcvk is faster.
fmt = "%-13s %-16s %12s %12s %8s %10s %10s %8s"
head = ("CASE", "SHAPE", "E2MCVK s", "TORCH s", "UNIT", "E2MCVK", "TORCH", "RATIO")
if rounds > 1:
    fmt += " %13s"
    head += ("ROUNDS",)
print(fmt % head)
for k in keys:
    ra, rb = ours.get(k), theirs.get(k)
    a, unit_a = figure(ra)
    b, unit_b = figure(rb)
    ratio = "%.3f" % (rb["seconds"] / ra["seconds"]) if ra and rb else "-"
    row = (k[0], k[1], seconds(ra), seconds(rb), unit_a or unit_b,
           "%.2f" % a if a else "-", "%.2f" % b if b else "-", ratio)
    if rounds > 1:
        row += (ratio_range(k),)
    print(fmt % row)
PY
exit "$status"
