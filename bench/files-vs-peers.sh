#!/usr/bin/env bash
# The file plane beside rsync and sendme (iroh) on the same data, on loopback, in one run:
#   relay: first upload of an incompressible file, the same file again, the file after a 1 MiB
#          edit in the middle, and a download;
#   relay: also four puts of four other files of the same size (random, so nothing deduplicates)
#          from four clients at once;
#   rsync: a daemon on 127.0.0.1, first copy and the delta after the same edit; then the same
#          first copy over ssh (Debian's sshd on a loopback port, keys made for the run), which
#          is how offices copy files securely without a relay;
#   sendme: send and receive of the same file, inside a new network namespace that has nothing
#          but loopback (sendme otherwise reaches public relay and discovery servers).
# Each step runs RUNS times (default 3; every run starts from an empty relay store, an empty rsync
# destination and a fresh sendme pair) and prints the median wall time, every run's time, the
# bytes that travelled and the CPU seconds of each end.
#
# Usage: bench/files-vs-peers.sh [SIZE_MIB]   (default 1024)
#   Installs rsync and openssh-server (apt-get) when they are missing; builds the release relay;
#   installs sendme with `cargo install sendme --locked` when it is missing (about 10 minutes);
#   the sendme and ssh steps need root (`unshare -n`, sshd).
#   Environment: RUNS, FILES_PORT (default 14433), HTTP_PORT (18080), RSYNC_PORT (18873),
#   SSH_PORT (18822), SENDME_PORT (17777), SENDME=0 (leave sendme out), CARGO_TARGET_DIR,
#   RELAY_BIN (a relay binary to measure instead of building one, e.g. an older release for a
#   before-and-after), RELAY_CONFIG_EXTRA (lines added to the relay's [files] section, to
#   measure a setting).
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib=${1:-1024}
runs=${RUNS:-3}
files_port=${FILES_PORT:-14433}
http_port=${HTTP_PORT:-18080}
rsync_port=${RSYNC_PORT:-18873}
ssh_port=${SSH_PORT:-18822}
sendme_port=${SENDME_PORT:-17777}
with_sendme=${SENDME:-1}
if ! command -v rsync >/dev/null || [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null; then
  echo "installing rsync and ssh (apt-get install -y rsync openssh-server openssh-client)..." >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync \
    openssh-server openssh-client >/dev/null; } ||
    { echo "rsync and ssh are needed and could not be installed" >&2; exit 2; }
fi
if [ "$with_sendme" != 0 ] && ! command -v sendme >/dev/null; then
  echo "installing sendme (cargo install sendme --locked)..." >&2
  cargo install sendme --locked -q
fi
[ -n "${RELAY_BIN:-}" ] || cargo build --release --locked -q -p relay

work=$(mktemp -d)
relay_pid= rsyncd_pid= sshd_pid=
trap 'kill $relay_pid $rsyncd_pid $sshd_pid 2>/dev/null || true; rm -rf "$work"' EXIT
# A copy, so that another build into the same target directory cannot change it mid-run.
relay=$work/relay
export TIMES_FILE=$work/times
cp "${RELAY_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/relay}" "$relay"

head -c "$((size_mib << 20))" /dev/urandom >"$work/video.bin"
cp "$work/video.bin" "$work/edited.bin"
dd if=/dev/urandom of="$work/edited.bin" bs=1M count=1 seek=$((size_mib / 2)) conv=notrunc status=none
touch -d '2000-01-01' "$work/edited.bin"
# Four more files of the same size for the concurrent puts, none sharing a chunk with another.
for i in 1 2 3 4; do head -c "$((size_mib << 20))" /dev/urandom >"$work/other$i.bin"; done

declare -A walls bytes cpus
record() { # step, wall, bytes, cpu
  walls[$1]+="$2 "
  bytes[$1]=$3
  cpus[$1]+="$4 "
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# CPU seconds (user + system) of a process so far, and of this shell's waited-for children.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
# `times` must run in this shell, not in a command substitution's subshell: it sets KIDS.
children_cpu() {
  times >"$TIMES_FILE"
  KIDS=$(tail -1 "$TIMES_FILE" | awk '{ gsub(/[ms]/, " "); split($0, t, " "); printf "%.2f", t[1] * 60 + t[2] + t[3] * 60 + t[4] }')
}
now() { date +%s.%N; }

cat >"$work/relay.toml" <<EOF
[http]
listen = "127.0.0.1:$http_port"
[media]
first_port = 0
workers = 1
[files]
listen = "127.0.0.1:$files_port"
${RELAY_CONFIG_EXTRA:-}
EOF

relay_step() { # name, command...
  local name=$1; shift
  local c0 k0 t0 t1 c1 k1 out
  children_cpu; k0=$KIDS
  c0=$(cpu_of "$relay_pid"); t0=$(now)
  out=$("$@")
  t1=$(now); c1=$(cpu_of "$relay_pid")
  children_cpu; k1=$KIDS
  local sent
  sent=$(printf '%s' "$out" | grep -o '"bytes_\(sent\|received\)":[0-9]*' | head -1 | cut -d: -f2 || true)
  record "$name" "$(echo "$t1 - $t0" | bc)" "${sent:-?}" "$(echo "$k1 - $k0" | bc)/$(echo "$c1 - $c0" | bc)"
  LAST=$out
}

# Four puts from four client processes at once; fails if any fails.
put_four() {
  local pids=() f p
  for f in other1 other2 other3 other4; do
    "$relay" files put "$work/$f.bin" "$@" >/dev/null &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
}

relay_run() {
  rm -rf "$work/data" "$work/out" "$work/client-state"
  # The client's remembered scans, fresh for every run.
  export RELAY_STATE_DIR=$work/client-state
  mkdir -p "$work/out"
  "$relay" serve --config "$work/relay.toml" --data "$work/data" 2>"$work/relay.log" &
  relay_pid=$!
  for _ in $(seq 100); do grep -q "relay is up" "$work/relay.log" && break; sleep 0.1; done
  grep -q "relay is up" "$work/relay.log" || { cat "$work/relay.log" >&2; exit 1; }
  export RELAY_TOKEN
  RELAY_TOKEN=$("$relay" token --data "$work/data" --org demo --user demo --device demo-browser --grants files)
  local conn=(--server "127.0.0.1:$files_port" --data "$work/data" --json)
  cp "$work/video.bin" "$work/put.bin"
  relay_step "relay put (first)" "$relay" files put "$work/put.bin" "${conn[@]}"
  local id
  id=$(printf '%s' "$LAST" | grep -o '"id":"[0-9a-f]*"' | cut -d'"' -f4)
  # The client trusts its remembered scan of a file only if the file had held still for 3 s
  # before that scan (see the README). The first put began just after the copy, so the next one
  # hashes the file along the remembered chunks; begun 3 s after the copy, it leaves a scan that
  # the put after it trusts, reading nothing.
  sleep 3
  relay_step "relay put (same again)" "$relay" files put "$work/put.bin" "${conn[@]}"
  relay_step "relay put (same, remembered)" "$relay" files put "$work/put.bin" "${conn[@]}"
  cp "$work/edited.bin" "$work/put.bin"
  relay_step "relay put (1 MiB edited)" "$relay" files put "$work/put.bin" "${conn[@]}"
  relay_step "relay get" "$relay" files get "$id" -o "$work/out/video.bin" "${conn[@]}"
  cmp "$work/out/video.bin" "$work/video.bin"
  # Four clients at once, each putting a file the relay has not seen.
  relay_step "relay 4 puts at once" put_four "${conn[@]}"
  kill "$relay_pid"; wait "$relay_pid" 2>/dev/null || true
  relay_pid=
}

rsync_step() { # name, file
  local t0 t1 k0 k1 out
  children_cpu; k0=$KIDS
  t0=$(now)
  out=$(rsync --stats "$2" "rsync://127.0.0.1:$rsync_port/dst/video.bin")
  t1=$(now)
  children_cpu; k1=$KIDS
  record "$1" "$(echo "$t1 - $t0" | bc)" \
    "$(printf '%s' "$out" | awk -F: '/Total bytes sent/ { gsub(/[ ,]/, "", $2); print $2 }')" \
    "$(echo "$k1 - $k0" | bc)/-"
}

rsync_run() {
  rm -rf "$work/rsync-dst"; mkdir -p "$work/rsync-dst"
  cat >"$work/rsyncd.conf" <<EOF
use chroot = no
uid = 0
gid = 0
[dst]
path = $work/rsync-dst
read only = no
EOF
  rsync --daemon --no-detach --address=127.0.0.1 --port="$rsync_port" --config="$work/rsyncd.conf" &
  rsyncd_pid=$!
  sleep 0.5
  rsync_step "rsync (first)" "$work/video.bin"
  rsync_step "rsync (1 MiB edited, delta)" "$work/edited.bin"
  kill "$rsyncd_pid"; wait "$rsyncd_pid" 2>/dev/null || true
  rsyncd_pid=
}

# sshd on a loopback port with a host key and a client key made for the run (as root).
ssh_opts() {
  echo "-p $ssh_port -i $work/ssh/client -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes"
}
sshd_start() {
  mkdir -p "$work/ssh" /run/sshd
  ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/host" >/dev/null
  ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/client" >/dev/null
  cp "$work/ssh/client.pub" "$work/ssh/authorized_keys"
  cat >"$work/ssh/sshd_config" <<EOF
ListenAddress 127.0.0.1:$ssh_port
HostKey $work/ssh/host
AuthorizedKeysFile $work/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
UsePAM no
EOF
  /usr/sbin/sshd -D -e -f "$work/ssh/sshd_config" 2>"$work/ssh/log" &
  sshd_pid=$!
  for _ in $(seq 50); do
    # shellcheck disable=SC2046
    ssh $(ssh_opts) root@127.0.0.1 true 2>/dev/null && return 0
    sleep 0.1
  done
  cat "$work/ssh/log" >&2
  exit 1
}

ssh_run() {
  rm -rf "$work/ssh-dst"; mkdir -p "$work/ssh-dst"
  local t0 t1 k0 k1 out
  children_cpu; k0=$KIDS
  t0=$(now)
  out=$(rsync --stats -e "ssh $(ssh_opts)" "$work/video.bin" "root@127.0.0.1:$work/ssh-dst/video.bin")
  t1=$(now)
  children_cpu; k1=$KIDS
  # The receiving rsync is sshd's child, not this shell's: the CPU is the sending side's (rsync
  # and ssh).
  record "rsync over ssh (first)" "$(echo "$t1 - $t0" | bc)" \
    "$(printf '%s' "$out" | awk -F: '/Total bytes sent/ { gsub(/[ ,]/, "", $2); print $2 }')" \
    "$(echo "$k1 - $k0" | bc)/-"
  cmp "$work/video.bin" "$work/ssh-dst/video.bin"
}

# Runs inside `unshare -n`: loopback only. Prints: import seconds, transfer seconds, sender CPU,
# receiver CPU.
sendme_inner() {
  ip link set lo up
  local dir=$1 file=$2 port=$3
  rm -rf "$dir"; mkdir -p "$dir/recv"
  local t0 t1 t2 sp ticket
  t0=$(date +%s.%N)
  (cd "$dir" && exec sendme send --relay disabled --ticket-type addresses --magic-ipv4-addr "127.0.0.1:$port" \
    --no-progress "$file" >"$dir/send.out" 2>&1) &
  sp=$!
  for _ in $(seq 1200); do grep -q "sendme receive" "$dir/send.out" && break; sleep 0.05; done
  t1=$(date +%s.%N)
  ticket=$(grep -o 'sendme receive [a-z0-9]*' "$dir/send.out" | awk '{ print $3 }')
  [ -n "$ticket" ] || { cat "$dir/send.out" >&2; kill "$sp"; return 1; }
  local k0 k1
  children_cpu; k0=$KIDS
  (cd "$dir/recv" && sendme receive --relay disabled --no-progress "$ticket" >"$dir/recv.out" 2>&1)
  t2=$(date +%s.%N)
  children_cpu; k1=$KIDS
  local hz sc
  hz=$(getconf CLK_TCK)
  sc=$(awk -v hz="$hz" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$sp/stat")
  kill "$sp"; wait "$sp" 2>/dev/null || true
  cmp "$file" "$dir/recv/$(basename "$file")"
  echo "$(echo "$t1 - $t0" | bc) $(echo "$t2 - $t1" | bc) $sc $(echo "$k1 - $k0" | bc)"
}

sendme_run() {
  local out
  out=$(unshare -n bash -c "$(declare -f sendme_inner children_cpu); sendme_inner \"\$@\"" _ \
    "$work/sendme" "$work/video.bin" "$sendme_port")
  rm -rf "$work/sendme"
  local prep xfer scpu rcpu
  read -r prep xfer scpu rcpu <<<"$out"
  # The sender's CPU covers its import and its side of the transfer.
  record "sendme import (send side)" "$prep" "-" "-/-"
  record "sendme transfer (receive)" "$xfer" "-" "$rcpu/$scpu"
}

echo "file: ${size_mib} MiB incompressible; $(nproc) CPUs; $(date -u '+%F %H:%M') UTC; $runs runs"
sshd_start
for _ in $(seq "$runs"); do
  relay_run
  rsync_run
  ssh_run
  if [ "$with_sendme" != 0 ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null; then
    sendme_run
  fi
done
order=("relay put (first)" "relay put (same again)" "relay put (same, remembered)"
  "relay put (1 MiB edited)" "relay get" "relay 4 puts at once"
  "rsync (first)" "rsync over ssh (first)" "rsync (1 MiB edited, delta)" "sendme import (send side)" "sendme transfer (receive)")
printf '%-28s %8s  %-26s %14s  %s\n' step median runs bytes "CPU s client/server per run"
for s in "${order[@]}"; do
  [ -n "${walls[$s]:-}" ] || continue
  printf '%-28s %7.2fs  %-26s %14s  %s\n' "$s" "$(median <<<"${walls[$s]}")" \
    "$(for w in ${walls[$s]}; do printf '%.2f ' "$w"; done)" "${bytes[$s]}" "${cpus[$s]}"
done
