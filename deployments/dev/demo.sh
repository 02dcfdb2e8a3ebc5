#!/usr/bin/env bash
# The quick start: build the binaries, run a single-node cluster with its
# built-in agent (kiln-coordinator --dev), run a real two-stage build on it,
# show the result, and stop. Everything lives in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
make build >/dev/null
dir=$(mktemp -d)
port=${KILN_DEMO_PORT:-7070}
export KILN_COORDINATORS=127.0.0.1:$port
./bin/kiln-coordinator --dev --data-dir "$dir/data" --grpc-addr "$KILN_COORDINATORS" --log-level warn 2>"$dir/coordinator.log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
# Wait until the coordinator answers (at most 20s).
for _ in $(seq 1 100); do
  ./bin/kilnctl cluster status >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$dir/coordinator.log"; exit 1; }
  sleep 0.2
done
echo "== kilnctl run -f deployments/examples/hello.yaml --wait"
./bin/kilnctl run -f deployments/examples/hello.yaml --wait
echo
echo "== kilnctl run --wait -- echo one-off command"
./bin/kilnctl run --wait -- echo one-off command
echo
echo "== kilnctl builds"
./bin/kilnctl builds
echo
echo "== kilnctl status 1"
./bin/kilnctl status 1
