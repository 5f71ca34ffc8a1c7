#!/usr/bin/env bash
# Make arm64 emulation available on this x86 machine (called by .ci/docker-up.sh; idempotent):
#   1. QEMU >= 8 (Debian trixie's qemu-user 10; its qemu-x86_64 is installed beside it for edgekiln.isa, fetched with a private sources list: the system's
#      sources are not touched; unpacked with dpkg-deb -x) registered in binfmt_misc as
#      `edgekiln-aarch64` with the F flag (containers can use it); an older qemu-aarch64 entry
#      (bookworm's 7.2 crashes ONNX Runtime and LiteRT) is disabled.
#   2. The arm64 stand-in base edgekiln/stand-in-base-arm64:bookworm on each engine given: Debian
#      bookworm arm64 (debootstrap --foreign downloads it, dpkg-deb -x unpacks it: nothing runs
#      under emulation) plus /opt/venv with the real aarch64 wheels of images/arm-validate's lock,
#      installed on the host by pip --platform. Loaded as a docker archive whose config says
#      linux/arm64 (`docker import` on Docker 20.10 would label it amd64).
# Both are cached under EDGEKILN_BASE_CACHE; a rerun takes seconds.
#
#   .ci/arm64-up.sh [DOCKER_HOST ...]      # default: the default engine
# Exit 1 with one line saying why when emulation cannot be had (CI: a failure).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${EDGEKILN_BASE_CACHE:-/var/cache/edgekiln}"
MIRROR="${EDGEKILN_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
QEMU_SUITE="${EDGEKILN_QEMU_SUITE:-trixie}"
QEMU_BIN=/usr/local/lib/edgekiln/qemu-aarch64
# the same package's x86-64 user mode: int8 validated on the AVX2 kernel path (-cpu Haswell) on any x86
# host, VNNI ones included (edgekiln/isa.py finds it here)
QEMU_X86=/usr/local/lib/edgekiln/qemu-x86_64
ARM_TAG="edgekiln/stand-in-base-arm64:bookworm"
LOCK=images/arm-validate/requirements.txt
LOCK_SUM=$(sha256sum "$LOCK" | cut -c1-12)
ARM_TAR="$CACHE/stand-in-base-arm64-bookworm-$LOCK_SUM.docker.tar"
BINFMT=/proc/sys/fs/binfmt_misc
LOGDIR=/var/log/edgekiln
T0=$SECONDS
say() { printf '[arm64-up %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { echo "arm64-up: $*" >&2; exit 1; }
mkdir -p "$CACHE" "$LOGDIR" "$(dirname "$QEMU_BIN")"
PY=python3  # pip on the host (the checkout's .venv when the system Python has none)
python3 -m pip --version >/dev/null 2>&1 || PY=.venv/bin/python
hosts=("$@")
((${#hosts[@]})) || hosts=(unix:///var/run/docker.sock)

# --- 1. QEMU -----------------------------------------------------------------------------------
mountpoint -q "$BINFMT" || mount binfmt_misc -t binfmt_misc "$BINFMT" \
  || die "cannot mount binfmt_misc at $BINFMT (needs root and a kernel with binfmt_misc)"
if ! PYTHONPATH=. python3 -m edgekiln.emulation status >/dev/null || [[ ! -x "$QEMU_X86" ]]; then
  if [[ ! -x "$QEMU_BIN" || ! -x "$QEMU_X86" ]]; then
    apt_dir="$CACHE/apt-$QEMU_SUITE"
    mkdir -p "$apt_dir/lists/partial"
    echo "deb $MIRROR $QEMU_SUITE main" >"$apt_dir/sources.list"
    apt_opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=-
              -o "Dir::State::Lists=$apt_dir/lists" -o APT::Get::List-Cleanup=0)
    say "fetching qemu-user from Debian $QEMU_SUITE (private sources list)"
    apt-get -qq "${apt_opts[@]}" update >"$LOGDIR/arm64-apt.log" 2>&1 || die "apt-get update of $QEMU_SUITE failed (see $LOGDIR/arm64-apt.log)"
    rm -rf "$apt_dir/deb" && mkdir -p "$apt_dir/deb"
    (cd "$apt_dir/deb" && apt-get -qq "${apt_opts[@]}" download qemu-user >>"$LOGDIR/arm64-apt.log" 2>&1) \
      || die "apt-get download qemu-user failed (see $LOGDIR/arm64-apt.log)"
    dpkg-deb -x "$apt_dir"/deb/qemu-user_*.deb "$apt_dir/x"
    install -m 0755 "$apt_dir/x/usr/bin/qemu-aarch64" "$QEMU_BIN"
    install -m 0755 "$apt_dir/x/usr/bin/qemu-x86_64" "$QEMU_X86"
    rm -rf "$apt_dir/x" "$apt_dir/deb"
  fi
  # the system's older QEMU entry is disabled (update-binfmts --enable qemu-aarch64 brings it back);
  # an earlier registration of ours is removed, to be registered again below
  [[ -e "$BINFMT/qemu-aarch64" ]] && echo 0 >"$BINFMT/qemu-aarch64"
  [[ -e "$BINFMT/edgekiln-aarch64" ]] && echo -1 >"$BINFMT/edgekiln-aarch64"
  printf '%s' ":edgekiln-aarch64:M::\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:$QEMU_BIN:F" \
    >"$BINFMT/register"
fi
why=$(PYTHONPATH=. python3 -m edgekiln.emulation status) || die "$why"
say "$why"

# --- 2. the arm64 stand-in base ----------------------------------------------------------------
make_arm_tar() {
  local root="$CACHE/rootfs-arm64.$$" wheels="$CACHE/wheels-arm64.$$" plat=() v pip_pid
  rm -rf "$root" "$wheels"
  trap 'rm -rf "$root" "$wheels"' EXIT
  for v in 2014 _2_17 _2_26 _2_27 _2_28; do plat+=(--platform "manylinux${v}_aarch64"); done
  say "pip download: the aarch64 wheels of $LOCK (on the host, beside debootstrap)"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
    "${plat[@]}" -d "$wheels" -r "$LOCK" >"$LOGDIR/arm64-pip.log" 2>&1 &
  pip_pid=$!
  say "debootstrap --foreign --arch=arm64 bookworm minbase + python3 (download and unpack only)"
  debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,ca-certificates \
    bookworm "$root" "$MIRROR" >"$LOGDIR/debootstrap-arm64.log" 2>&1 \
    || { tail -n 20 "$LOGDIR/debootstrap-arm64.log" >&2; die "debootstrap failed"; }
  for deb in "$root"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$root"; done
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/debootstrap "$root"/usr/share/{doc,man,info,locale}
  wait "$pip_pid" || die "pip download failed (see $LOGDIR/arm64-pip.log)"
  say "pip install --target /opt/venv of the rootfs (on the host)"
  local venv="$root/opt/venv"
  mkdir -p "$venv/bin"
  ln -s /usr/bin/python3.11 "$venv/bin/python"
  ln -s python "$venv/bin/python3"
  printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11\n' >"$venv/pyvenv.cfg"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: --python-version 3.11 \
    --implementation cp "${plat[@]}" --target "$venv/lib/python3.11/site-packages" "$wheels"/*.whl \
    >>"$LOGDIR/arm64-pip.log" 2>&1 || die "pip install --target failed (see $LOGDIR/arm64-pip.log)"
  tar --numeric-owner -C "$root" -cf "$CACHE/rootfs-arm64.tar" .
  rm -rf "$root" "$wheels"
  trap - EXIT
  PYTHONPATH=. python3 -m edgekiln.emulation archive "$CACHE/rootfs-arm64.tar" "$ARM_TAR" "$ARM_TAG" --arch arm64 \
    --label "edgekiln.arm-lock=$LOCK_SUM" >/dev/null
  rm -f "$CACHE/rootfs-arm64.tar"
  say "cached $ARM_TAR ($(du -h "$ARM_TAR" | cut -f1))"
}

for host in "${hosts[@]}"; do
  if [[ "$(docker -H "$host" image inspect "$ARM_TAG" \
          --format '{{.Architecture}} {{index .Config.Labels "edgekiln.arm-lock"}}' 2>/dev/null)" == "arm64 $LOCK_SUM" ]]; then
    say "$ARM_TAG present at $host"
    continue
  fi
  [[ -s "$ARM_TAR" ]] || make_arm_tar
  say "docker load $ARM_TAG at $host"
  docker -H "$host" load -i "$ARM_TAR" >/dev/null
done
say "ready: arm64 containers run under $why"
