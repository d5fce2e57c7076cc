#!/usr/bin/env bash
# Installs every Debian 12 system package e2mcvk needs to build, run and test.
# Safe to run any number of times: it only calls apt-get when a package is missing.
set -euo pipefail

packages=(
  # Vulkan: the loader, its headers (cgo), the validation layer the test
  # suite runs under, and vulkaninfo for diagnosis. lavapipe is below.
  libvulkan1 libvulkan-dev vulkan-validationlayers vulkan-tools
  # GLSL -> SPIR-V compiler for `go generate ./shaders` and the stale-SPIR-V test.
  glslc
  # Reference oracles and the PyTorch side of the benchmarks (DESIGN.md section 5).
  python3 python3-numpy python3-scipy python3-torch python3-torchvision
  # Real photos (scikit-learn's sample images) for the augmentation checks.
  python3-sklearn
  # The built-in default data set.
  dataset-fashion-mnist
  # cgo toolchain.
  gcc libc6-dev pkg-config
)

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# lavapipe (Vulkan on the CPU, the test device) comes from bookworm-backports
# on Debian 12: Mesa 25's llvmpipe compiles our kernels to much faster code
# than bookworm's Mesa 22.3 (see BENCHMARKS.md). The suite passes on both.
have_mesa=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
if grep -qs '^VERSION_CODENAME=bookworm' /etc/os-release; then
  if [ "${have_mesa%%.*}" -lt 25 ] 2>/dev/null || [ -z "$have_mesa" ]; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      # The backports suite lives on the mirror the system already uses.
      mirror=$(grep -rhsE '^[[:space:]]*(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/ |
        grep -v -e security -e backports |
        sed -E 's/^[[:space:]]*(URIs:|deb)[[:space:]]+(\[[^]]*\][[:space:]]+)?//' | awk '{print $1}' |
        grep -E '/debian/?$' | sed -n 1p) || true # (a missing sources.list makes grep exit 2)
      if [ -z "$mirror" ]; then
        echo "setup: no Debian mirror found in the APT sources to add bookworm-backports" >&2
        exit 1
      fi
      echo "deb $mirror bookworm-backports main" | $sudo tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
    fi
    echo "setup: installing mesa-vulkan-drivers from bookworm-backports" >&2
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends -t bookworm-backports mesa-vulkan-drivers
  fi
elif [ -z "$have_mesa" ]; then
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends mesa-vulkan-drivers
fi

if ! command -v go >/dev/null 2>&1; then
  echo "setup: Go is not on PATH; install Go >= $(sed -n 's/^go //p' "$(dirname "$0")/../go.mod")" >&2
  exit 1
fi
