#!/usr/bin/env bash
# Our relay beside Janus's VideoRoom, with the same simulated clients and settings, in one run:
# `relay-loadtest media --beside-janus` with any further options given here (rooms, publishers,
# subscribers, duration, --json ...). Installs Debian's janus (and iproute2) when missing and
# builds the release binaries.
#
# The load tester does the rest itself: it moves the run into a network namespace of its own
# (loopback addresses only; needs root), copies janus.jcfg, janus.transport.http.jcfg and
# janus.plugin.videoroom.jcfg from /etc/janus into a temporary folder with ICE and the HTTP API
# on loopback and every other plugin and transport off, starts `janus -C FILE -F DIR`, drives
# its HTTP API, and stops it at the end (on error too).
#
# Usage: bench/janus.sh [--rooms N] [--publishers N] [--subscribers N] [--json FILE] ...
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v janus >/dev/null || need+=(janus)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked -q -p relay -p relay-loadtest
exec "${CARGO_TARGET_DIR:-target}/release/relay-loadtest" media --beside-janus "$@"
