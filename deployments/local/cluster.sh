#!/usr/bin/env bash
# Run a 3-coordinator cluster and two agents on this machine, on loopback,
# in the foreground; Ctrl-C stops everything. Data lives in ${KILN_LOCAL_DIR:-./kiln-local}.
#   coordinators: gRPC 127.0.0.1:7170-7172, Raft 127.0.0.1:7180-7182, /metrics on http://127.0.0.1:7190-7192
#   agents a1, a2: /metrics on http://127.0.0.1:7193-7194 (deployments/grafana/prometheus.yml scrapes all five)
#   then: export KILN_COORDINATORS=127.0.0.1:7170,127.0.0.1:7171,127.0.0.1:7172
set -euo pipefail
cd "$(dirname "$0")/../.."
make build >/dev/null
dir=${KILN_LOCAL_DIR:-./kiln-local}
mkdir -p "$dir"
cluster=n1=127.0.0.1:7180,n2=127.0.0.1:7181,n3=127.0.0.1:7182
coords=127.0.0.1:7170,127.0.0.1:7171,127.0.0.1:7172
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in 1 2 3; do
  ./bin/kiln-coordinator --node-id n$i --data-dir "$dir/n$i" \
    --grpc-addr 127.0.0.1:717$((i-1)) --raft-addr 127.0.0.1:718$((i-1)) --http-addr 127.0.0.1:719$((i-1)) \
    --initial-cluster "$cluster" 2>"$dir/n$i.log" &
  pids+=($!)
done
for a in a1 a2; do
  ./bin/kiln-agent --coordinators "$coords" --name $a --labels pool=local --slots 2 --http-addr 127.0.0.1:$((7193 + ${a#a} - 1)) \
    --work-dir "$dir/$a" 2>"$dir/$a.log" &
  pids+=($!)
done
echo "cluster running; logs in $dir; export KILN_COORDINATORS=$coords"
wait
