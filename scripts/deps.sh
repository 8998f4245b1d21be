#!/usr/bin/env bash
# Installs the Debian packages shoal's build, tests and quickstart need, if missing.
# Usage: scripts/deps.sh [extra-package ...]   (as root)
set -euo pipefail
need=(libseccomp-dev busybox-static docker-registry apache2-utils nftables iproute2 util-linux curl ca-certificates gcc libc6-dev "$@")
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# docker-registry's package may start a system instance on :5000; shoal's scripts use their own ports.
if ! command -v cargo >/dev/null; then
  echo "deps: cargo is not on PATH: install a Rust toolchain (1.88 or newer) first" >&2
  exit 1
fi
