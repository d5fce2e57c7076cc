#!/usr/bin/env bash
# Installs every Debian 12 system package e2mcvk needs to build, run and test.
# Safe to run any number of times: it only calls apt-get when a package is missing.
set -euo pipefail

packages=(
  # Vulkan: the loader, its headers (cgo), lavapipe (Vulkan on the CPU), the
  # validation layer the test suite runs under, and vulkaninfo for diagnosis.
  libvulkan1 libvulkan-dev mesa-vulkan-drivers vulkan-validationlayers vulkan-tools
  # GLSL -> SPIR-V compiler for `go generate ./shaders` and the stale-SPIR-V test.
  glslc
  # Reference oracles and the PyTorch side of the benchmarks (DESIGN.md section 5).
  python3 python3-numpy python3-scipy python3-torch
  # The built-in default data set.
  dataset-fashion-mnist
  # cgo toolchain.
  gcc libc6-dev pkg-config
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v go >/dev/null 2>&1; then
  echo "setup: Go is not on PATH; install Go >= $(sed -n 's/^go //p' "$(dirname "$0")/../go.mod")" >&2
  exit 1
fi
