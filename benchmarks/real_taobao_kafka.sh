#!/usr/bin/env bash
# The real Taobao stream slice through the whole path on Kafka: embedded broker -> replay (Taobao adapter)
# -> Beam job from Kafka -> point-in-time training set -> train. Writes the JSON reports under $H;
# benchmarks/results/real_data.md was written by hand from them.
#   bash benchmarks/real_taobao_kafka.sh        (from the repository root; ../shared/data must exist)
set -euo pipefail
C=${CTRFLOW:-.venv/bin/ctrflow}
H=${H:-/tmp/ctrflow-taobao-kafka}
rm -rf "$H" && mkdir -p "$H"
PORT=${PORT:-39092}
$C broker --port "$PORT" > "$H/broker.log" 2>&1 &
BROKER=$!
trap 'kill $BROKER' EXIT
for _ in $(seq 60); do grep -q "127.0.0.1:$PORT" "$H/broker.log" 2>/dev/null && break; sleep 1; done
grep -q "127.0.0.1:$PORT" "$H/broker.log" || { echo "broker did not start: see $H/broker.log" >&2; exit 1; }
export CTRFLOW_HOME=$H CTRFLOW_KAFKA_BOOTSTRAP=127.0.0.1:$PORT
T0=$(date +%s)
$C replay ../shared/data/taobao-userbehavior/stream_slice_2017-11-26.csv --format taobao --json > "$H/replay.json"
$C features build --from-kafka --final --json > "$H/features.json"
$C dataset build --start 2017-11-26T02:45:00Z --end 2017-11-26T02:56:00Z --json > "$H/dataset.json"
$C train --teacher-grade G1 --students 2 --baselines lr,din --json --config '{"teacher": {"d_model": 32, "n_heads": 2, "seq_len": 20, "n_entry": 1, "n_shared": 1, "n_exit": 1, "loops": 2, "d_embed": 16, "head_hidden": [64, 32]}, "student": {"d_model": 32, "n_heads": 2, "seq_len": 20, "local_window": 4, "dilation": 4, "d_embed": 16, "head_hidden": [64, 32]}, "baseline": {"d_embed": 16, "hidden": [64, 32], "seq_len": 20}, "batch_size": 128, "lr": 0.005, "threads": 1}' > "$H/train.json"
echo "total $(( $(date +%s) - T0 ))s; outputs in $H"
