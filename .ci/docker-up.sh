#!/usr/bin/env bash
# Start a real Docker engine on this machine and give it the stand-in base image.
#
# Idempotent: installs docker.io + debootstrap if missing, starts dockerd with the flags of
# DESIGN.md ("Facts about this workplace's machines") unless an engine already answers, and imports
# the stand-in base image (Debian bookworm minbase + python3/venv/pip + the host's CA bundle) as
# edgekiln/stand-in-base:bookworm. The rootfs tarball is cached, so a rerun takes seconds.
#
#   .ci/docker-up.sh              # the default engine (unix:///var/run/docker.sock) and a second
#                                 # one (own data root, unix:///run/edgekiln-docker2.sock): the
#                                 # tests' second "host"
#   .ci/docker-up.sh --single     # only the default engine
#
# Environment: EDGEKILN_BASE_CACHE (default /var/cache/edgekiln), EDGEKILN_STORAGE_DRIVER (force
# overlay2 or vfs), EDGEKILN_DEBIAN_MIRROR, EDGEKILN_DOCKER2_TCP (the second engine's loopback TCP
# address, default tcp://127.0.0.1:23750; empty: none). Arm emulation for the default engine comes
# from .ci/arm64-up.sh (QEMU 10 + the arm64 stand-in base); when it cannot be had that is a warning,
# or a failure with EDGEKILN_REQUIRE_ARM64=1 (CI).
set -euo pipefail

SECOND=1
for arg in "$@"; do
  case "$arg" in
    --second) SECOND=1 ;;
    --single) SECOND=0 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "docker-up: unknown argument $arg" >&2; exit 2 ;;
  esac
done

BASE_TAG="edgekiln/stand-in-base:bookworm"
CACHE="${EDGEKILN_BASE_CACHE:-/var/cache/edgekiln}"
BASE_TAR="$CACHE/stand-in-base-bookworm.tar"
MIRROR="${EDGEKILN_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST1="unix:///var/run/docker.sock"
HOST2="unix:///run/edgekiln-docker2.sock"
# The second engine also listens on loopback TCP (no TLS: 127.0.0.1 only, CI machines): a
# `tcp://` host whose files are not this machine's as far as edgekiln knows (copy in / copy out).
HOST2_TCP="${EDGEKILN_DOCKER2_TCP-tcp://127.0.0.1:23750}"
LOGDIR="/var/log/edgekiln"
T0=$SECONDS

say() { printf '[docker-up %3ds] %s\n' "$((SECONDS - T0))" "$*"; }

answers() {  # answers HOST: does an engine reply there?
  timeout 10 docker -H "$1" info --format '{{.ServerVersion}} {{.Driver}}' >/dev/null 2>&1
}

wait_for() {  # wait_for HOST PID SECONDS
  local host=$1 pid=$2 limit=$3 i
  for ((i = 0; i < limit * 2; i++)); do
    answers "$host" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}

# --- 1. packages -------------------------------------------------------------------------------
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  say "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v docker >/dev/null || { echo "docker-up: no docker CLI after install" >&2; exit 1; }
mkdir -p "$LOGDIR" "$CACHE"

# --- 2. engines --------------------------------------------------------------------------------
start_engine() {  # start_engine NAME HOST EXTRA_ARGS...
  local name=$1 host=$2; shift 2
  if answers "$host"; then
    say "$name already answers at $host ($(docker -H "$host" info --format '{{.ServerVersion}}, {{.Driver}}'))"
    return 0
  fi
  local drivers=(overlay2 vfs) driver
  [[ -n "${EDGEKILN_STORAGE_DRIVER:-}" ]] && drivers=("$EDGEKILN_STORAGE_DRIVER")
  for driver in "${drivers[@]}"; do
    say "starting $name (storage driver $driver, log $LOGDIR/$name.log)"
    # setsid + nohup: the daemon outlives this script and its job control group.
    setsid nohup dockerd --iptables=false --ip6tables=false --bridge=none \
      --storage-driver="$driver" -H "$host" "$@" >>"$LOGDIR/$name.log" 2>&1 </dev/null &
    local pid=$!
    if wait_for "$host" "$pid" 60; then
      say "$name answers at $host (pid $pid, $driver)"
      return 0
    fi
    say "$name did not come up with $driver; tail of its log:"
    tail -n 5 "$LOGDIR/$name.log" | sed 's/^/    /'
    kill "$pid" 2>/dev/null || true
    sleep 1
  done
  echo "docker-up: could not start $name (see $LOGDIR/$name.log)" >&2
  return 1
}

start_engine dockerd "$HOST1"
if ((SECOND)); then
  tcp_args=()
  [[ -n "$HOST2_TCP" ]] && tcp_args=(-H "$HOST2_TCP")
  start_engine dockerd2 "$HOST2" "${tcp_args[@]}" \
    --data-root /var/lib/edgekiln-docker2 --exec-root /run/edgekiln-docker2 \
    --pidfile /run/edgekiln-docker2.pid \
    --containerd-namespace edgekiln2 --containerd-plugins-namespace edgekiln2-plugins
fi

# --- 3. the stand-in base image ----------------------------------------------------------------
make_base_tar() {
  local root="$CACHE/rootfs.$$"
  rm -rf "$root"
  say "debootstrap bookworm minbase into $root (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" "$MIRROR" >"$LOGDIR/debootstrap.log" 2>&1 \
    || { tail -n 20 "$LOGDIR/debootstrap.log" >&2; rm -rf "$root"; exit 1; }
  # The host's CA bundle (pip inside builds uses PIP_CERT pointing at it).
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar --numeric-owner -C "$root" -cf "$BASE_TAR.tmp" .
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$root"
  say "cached $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
}

import_base() {  # import_base HOST
  local host=$1
  if docker -H "$host" image inspect "$BASE_TAG" >/dev/null 2>&1; then
    say "$BASE_TAG present at $host"
    return 0
  fi
  [[ -s "$BASE_TAR" ]] || make_base_tar
  say "docker import $BASE_TAG at $host"
  docker -H "$host" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$BASE_TAR" "$BASE_TAG" >/dev/null
}

import_base "$HOST1"
((SECOND)) && import_base "$HOST2"

# --- 4. arm64 under emulation (QEMU user mode) for the default engine ---------------------------
if ! bash "$(dirname "$0")/arm64-up.sh" "$HOST1"; then
  [[ "${EDGEKILN_REQUIRE_ARM64:-}" == 1 ]] && { echo "docker-up: arm64 emulation is required (EDGEKILN_REQUIRE_ARM64=1)" >&2; exit 1; }
  say "no arm64 emulation here: Arm validation (--platform linux/arm64) is not available"
fi
say "ready: $(docker -H "$HOST1" info --format 'Docker {{.ServerVersion}}, {{.Driver}}')"
