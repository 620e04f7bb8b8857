#!/usr/bin/env bash
# One relay build's file plane, quickly, for side-by-side comparisons of two builds: a fresh relay
# on an empty data directory, one first put of a 1 GiB incompressible file, then GETS downloads of
# it to a new output file each (checked byte for byte). One line per step:
#
#   LABEL STEP WALL_S CLIENT_CPU_S RELAY_CPU_S
#
# Usage: bench/files-quick.sh RELAY_BIN LABEL [GETS]   (GETS defaults to 2)
#   Alternate two builds round by round and compare medians, e.g.
#   for r in 1 2 3; do bench/files-quick.sh /tmp/relay-a a 3; bench/files-quick.sh /tmp/relay-b b 3; done
#   Environment: WORK (default /tmp/files-quick; the 1 GiB source stays there between runs),
#   FILES_PORT (14499), HTTP_PORT (18090), EXTRA (lines added to the relay's [files] section).
set -euo pipefail
bin=$1
label=$2
gets=${3:-2}
work=${WORK:-/tmp/files-quick}
w=$work/$label
rm -rf "$w"
mkdir -p "$w/out"
[ -f "$work/source.bin" ] || head -c $((1024 << 20)) /dev/urandom >"$work/source.bin"
files_port=${FILES_PORT:-14499}
cat >"$w/relay.toml" <<T
[log]
level = "info"
[http]
listen = "127.0.0.1:${HTTP_PORT:-18090}"
[media]
first_port = 0
workers = 1
[files]
listen = "127.0.0.1:$files_port"
${EXTRA:-}
T
"$bin" serve --config "$w/relay.toml" --data "$w/data" 2>"$w/relay.log" &
rp=$!
trap 'kill $rp 2>/dev/null || true; rm -rf "$w"' EXIT
for _ in $(seq 100); do
  grep -q "relay is up" "$w/relay.log" && break
  sleep 0.1
done
RELAY_TOKEN=$("$bin" token --data "$w/data" --org demo --user demo --device demo-browser --grants files)
export RELAY_TOKEN RELAY_STATE_DIR=$w/state
conn=(--server "127.0.0.1:$files_port" --data "$w/data" --json)
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
step() {
  local name=$1
  shift
  local c0 t0 t1 c1 k
  c0=$(cpu $rp)
  t0=$(date +%s.%N)
  k=$({ /usr/bin/time -f "%U %S" "$@" >"$w/last"; } 2>&1 | tail -1 | awk '{printf "%.2f", $1 + $2}')
  t1=$(date +%s.%N)
  c1=$(cpu $rp)
  printf '%s %s %.2f %s %.2f\n' "$label" "$name" "$(echo "$t1 - $t0" | bc)" "$k" "$(echo "$c1 - $c0" | bc)"
}
cp "$work/source.bin" "$w/put.bin"
step put "$bin" files put "$w/put.bin" "${conn[@]}"
id=$(grep -o '"id":"[0-9a-f]*"' "$w/last" | cut -d'"' -f4)
for _ in $(seq "$gets"); do
  rm -f "$w/out/v.bin"
  step get "$bin" files get "$id" -o "$w/out/v.bin" "${conn[@]}"
  cmp "$w/out/v.bin" "$work/source.bin"
done
