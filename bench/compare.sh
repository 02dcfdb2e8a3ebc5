#!/usr/bin/env bash
# Builds the binaries of a base commit and of the work tree, then runs the
# end-to-end benchmark (bench/e2e) against both in one run, so every figure
# comes with its ratio after/before measured on the same machine at the
# same time. Usage: bench/compare.sh BASE [e2e flags...]
# Everything is built and run under one temporary directory, removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: bench/compare.sh BASE [e2e flags...]}
shift
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kiln-compare.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src" "$tmp/before" "$tmp/after"
git archive "$base" | tar -x -C "$tmp/src"
(cd "$tmp/src" && go build -o "$tmp/before/" ./cmd/kiln-coordinator ./cmd/kiln-agent ./cmd/kilnctl)
go build -o "$tmp/after/" ./cmd/kiln-coordinator ./cmd/kiln-agent ./cmd/kilnctl
go build -o "$tmp/e2e" ./bench/e2e
echo "before: $(git rev-parse --short "$base")  after: $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')" >&2
"$tmp/e2e" -bin "before=$tmp/before,after=$tmp/after" "$@"
