#!/usr/bin/env bash
# The file plane beside rsync on the same data, on loopback, in one run:
#   first upload of an incompressible file, the same file again, the file after a 1 MiB edit in
#   the middle, and a download; rsync (daemon on 127.0.0.1) for the first copy and the edit.
# Prints one line per step: wall seconds, bytes sent, and the relay's CPU seconds for the step.
#
# Usage: bench/files-vs-rsync.sh [SIZE_MIB]   (default 1024; needs rsync; builds the release relay)
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib=${1:-1024}
command -v rsync >/dev/null || { echo "rsync is needed: apt-get install -y rsync" >&2; exit 2; }
cargo build --release --locked -q -p relay
relay=$PWD/target/release/relay

work=$(mktemp -d)
trap 'kill $relay_pid $rsyncd_pid 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/rsync-dst" "$work/out"

cat >"$work/relay.toml" <<EOF
[http]
listen = "127.0.0.1:18080"
[media]
first_port = 0
workers = 1
[files]
listen = "127.0.0.1:14433"
EOF
"$relay" serve --config "$work/relay.toml" --data "$work/data" 2>"$work/relay.log" &
relay_pid=$!
for _ in $(seq 100); do grep -q "relay is up" "$work/relay.log" && break; sleep 0.1; done
grep -q "relay is up" "$work/relay.log" || { cat "$work/relay.log" >&2; exit 1; }
export RELAY_TOKEN
RELAY_TOKEN=$("$relay" token --data "$work/data" --org demo --user demo --device demo-browser --grants files)
conn=(--server 127.0.0.1:14433 --data "$work/data" --json)

head -c "$((size_mib << 20))" /dev/urandom >"$work/video.bin"

# The relay's CPU seconds so far (user + system), from /proc.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$relay_pid/stat"; }

step() { # name, command...
  local name=$1; shift
  local c0 t0 t1 c1 out
  c0=$(cpu); t0=$(date +%s.%N)
  out=$("$@")
  t1=$(date +%s.%N); c1=$(cpu)
  local sent
  sent=$(printf '%s' "$out" | grep -o '"bytes_\(sent\|received\)":[0-9]*' | head -1 | cut -d: -f2)
  printf '%-28s %7.2f s  %14s bytes  relay CPU %5.2f s\n' "$name" "$(echo "$t1 - $t0" | bc)" "${sent:-?}" "$(echo "$c1 - $c0" | bc)"
  LAST=$out
}

echo "file: ${size_mib} MiB incompressible; $(nproc) CPUs; $(date -u +%F)"
step "relay put (first)" "$relay" files put "$work/video.bin" "${conn[@]}"
id=$(printf '%s' "$LAST" | grep -o '"id":"[0-9a-f]*"' | cut -d'"' -f4)
step "relay put (same again)" "$relay" files put "$work/video.bin" "${conn[@]}"
cp "$work/video.bin" "$work/video-orig.bin"
dd if=/dev/urandom of="$work/video.bin" bs=1M count=1 seek=$((size_mib / 2)) conv=notrunc status=none
step "relay put (1 MiB edited)" "$relay" files put "$work/video.bin" "${conn[@]}"
step "relay get" "$relay" files get "$id" -o "$work/out/video.bin" "${conn[@]}"
cmp "$work/out/video.bin" "$work/video-orig.bin"

cat >"$work/rsyncd.conf" <<EOF
use chroot = no
uid = 0
gid = 0
[dst]
path = $work/rsync-dst
read only = no
EOF
rsync --daemon --no-detach --address=127.0.0.1 --port=18873 --config="$work/rsyncd.conf" &
rsyncd_pid=$!
sleep 0.5
rstep() { # name, file
  local t0 t1 out
  t0=$(date +%s.%N)
  out=$(rsync --stats "$2" rsync://127.0.0.1:18873/dst/video.bin)
  t1=$(date +%s.%N)
  printf '%-28s %7.2f s  %14s bytes\n' "$1" "$(echo "$t1 - $t0" | bc)" \
    "$(printf '%s' "$out" | awk -F: '/Total bytes sent/ { gsub(/[ ,]/, "", $2); print $2 }')"
}
rstep "rsync (first)" "$work/video-orig.bin"
touch -d '2000-01-01' "$work/video.bin"
rstep "rsync (1 MiB edited, delta)" "$work/video.bin"
