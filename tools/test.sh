#!/usr/bin/env bash
# The test command of e2mcvk (README, .ci/run): formatting, vet, the test
# suite, then the test suite again under the Vulkan validation layer, which
# fails on any validation message. Run tools/setup.sh first on a fresh
# machine. Extra arguments are passed to both `go test` runs (e.g. -run X).
set -euo pipefail
cd "$(dirname "$0")/.."

# Behave like CI: the stale-SPIR-V test fails instead of skipping when glslc
# is missing.
export CI="${CI:-1}"

section() { printf '\n==== %s\n' "$*"; }

section "gofmt"
# Hidden top-level directories (.git, caches) are skipped.
mapfile -t gofiles < <(find . -path './.*' -prune -o -name '*.go' -print)
unformatted=""
if ((${#gofiles[@]})); then unformatted=$(gofmt -l "${gofiles[@]}"); fi
if [ -n "$unformatted" ]; then
  echo "these files need gofmt -w:" >&2
  echo "$unformatted" >&2
  exit 1
fi
echo ok

section "go vet ./..."
go vet ./...
echo ok

section "go test ./..."
go test "$@" ./...

section "E2MCVK_VALIDATE=1 go test -count=1 ./... (Vulkan validation layer)"
E2MCVK_VALIDATE=1 go test -count=1 "$@" ./...

section "all tests passed"
