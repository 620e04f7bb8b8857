#!/usr/bin/env bash
# Instructions per forwarded copy on the media core's per-packet path, counted by callgrind in a
# simulated room (bench/examples/packet_path.rs): repeatable on a noisy machine, unlike seconds.
#
#   bench/callgrind-packet-path.sh [SUBSCRIBERS...]     (default: 10 50)
#   SHAPE=camera bench/callgrind-packet-path.sh ...      (the publisher as a camera encoder)
#   SHAPE=idle bench/callgrind-packet-path.sh ...        (no publisher: instructions per idle
#                                                          connected session and second)
#
# For each room size it runs the room twice under callgrind, counting only the core's calls
# (relay::media::sim::core_datagram and core_timeout): settled for 6 simulated seconds, and
# settled plus 2 seconds more. The difference in instructions over the copies forwarded in those
# 2 seconds is the cost of one copy, with the core's timers, RTCP and STUN work shared out.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { apt-get install -y valgrind >/dev/null; }
cargo build --release --locked -p relay-bench --example packet_path
bin=target/release/examples/packet_path
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

shape=${SHAPE:-small}
count() { # SUBSCRIBERS SECONDS -> "instructions copies"
  local out="$work/cg.$1.$2"
  local line
  line=$(valgrind --tool=callgrind --callgrind-out-file="$out" --collect-atstart=no \
    --toggle-collect='relay::media::sim::core_datagram*' \
    --toggle-collect='relay::media::sim::core_timeout*' "$bin" "$1" "$2" "$shape" 2>/dev/null)
  local ir
  ir=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  local copies
  copies=$(sed -E 's/.*measured_copies ([0-9]+).*/\1/' <<<"$line")
  echo "$ir $copies"
}

echo "subscribers  instructions_per_copy  copies  (shape $shape, valgrind $(valgrind --version))"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(10 50)
for n in "${sizes[@]}"; do
  read -r base _ < <(count "$n" 0)
  # Idle sessions do their work once a second or less often: a longer window.
  m=2
  [ "$shape" = idle ] && m=10
  read -r total copies < <(count "$n" "$m")
  if [ "$shape" = idle ]; then
    echo "$n  idle: $(( (total - base) / (n * m) )) instructions per session-second"
  else
    echo "$n  $(( (total - base) / copies ))  $copies"
  fi
done
