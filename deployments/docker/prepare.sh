#!/bin/sh
# Fill bin/ with what the Dockerfile copies: static Kiln binaries built from
# this checkout and a static busybox (apt-get install busybox-static).
#   deployments/docker/prepare.sh [OUT_DIR]   (default: deployments/docker/bin)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/bin}
busybox=${KILN_BUSYBOX:-/bin/busybox}
mkdir -p "$out"
cd "$here/../.."
CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$out/" ./cmd/kiln-coordinator ./cmd/kiln-agent ./cmd/kilnctl
if command -v file >/dev/null && ! file -L "$busybox" | grep -q 'statically linked'; then
  echo "prepare.sh: $busybox is not a static busybox (apt-get install busybox-static, or set KILN_BUSYBOX)" >&2
  exit 1
fi
cp "$busybox" "$out/busybox"
echo "prepare.sh: images can be built from $here"
