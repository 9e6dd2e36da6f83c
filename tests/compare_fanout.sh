#!/usr/bin/env bash
# Same-run comparison of two server builds on `loadgen fanout`, interleaved so
# both see the same machine noise. Bounded: ROUNDS x 2 runs, 120 s each.
#   tests/compare_fanout.sh BASE_SERVER NEW_SERVER [MEMBERS] [ROUNDS]
# e.g. a baseline from an older commit:
#   git worktree add /tmp/base <rev> && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release -p presence-server)
#   cargo build --release -p presence-server -p presence-tests --bin loadgen
#   tests/compare_fanout.sh /tmp/base-target/release/presence-server target/release/presence-server 5000 2
set -u
base=$1 new=$2 members=${3:-1000} rounds=${4:-3}
loadgen="$(dirname "$0")/../target/release/loadgen"
port=4800
for round in $(seq "$rounds"); do
  for which in base new; do
    bin=$base; [ "$which" = new ] && bin=$new
    port=$((port + 1))
    "$bin" --dev-auth --bind "127.0.0.1:$port" --log error >/dev/null 2>&1 &
    pid=$!
    sleep 0.5
    out=$(timeout 120 "$loadgen" --url "ws://127.0.0.1:$port/ws" fanout --members "$members" 2>&1 \
      | grep -E '"fanout\.[0-9]+\.(join|converge)"' | tr '\n' ' ')
    echo "$which round $round: $out"
    kill "$pid"; wait "$pid" 2>/dev/null
  done
done
