#!/usr/bin/env bash
# Prepare this machine to build and run the compose deployment without network
# access from inside any build:
#   1. the Debian container engine and docker-compose (apt) when missing;
#   2. dockerd in the background when no engine answers (bounded wait);
#   3. a bookworm base image `bkv-base:bookworm` (python3, venv, libsodium23)
#      made with debootstrap from the host's own Debian mirror, cached;
#   4. deploy/wheelhouse/: wheels of the project and every runtime dependency.
# Every step is skipped when its result already exists. Steps can be chosen:
#   scripts/docker-setup.sh [engine] [daemon] [base] [wheelhouse]   (default: these four)
#   scripts/docker-setup.sh stop     stops the dockerd this script started
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="${BKV_BASE_IMAGE:-bkv-base:bookworm}"
SUITE=bookworm
DOCKERD_LOG="${BKV_DOCKERD_LOG:-/tmp/bkv-dockerd.log}"
DOCKERD_PIDFILE="${BKV_DOCKERD_PIDFILE:-/tmp/bkv-dockerd.pid}"
SOCKET_WAIT_SECONDS=60

say() { printf 'docker-setup: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# A newer docker client talks to an older daemon only at the daemon's API version;
# recent clients negotiate it, older ones need DOCKER_API_VERSION.
docker_env() {
    docker version >/dev/null 2>&1 && return 0
    local api
    api="$(docker version 2>&1 | sed -n 's/.*[Mm]aximum supported API version is \([0-9.]*\).*/\1/p' | head -n1)"
    [ -n "$api" ] || return 1
    export DOCKER_API_VERSION="$api"
    say "the daemon speaks API $api: export DOCKER_API_VERSION=$api for your own docker commands"
    docker version >/dev/null 2>&1
}

step_engine() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}"
    fi
}

step_daemon() {
    if docker_env; then
        return 0
    fi
    say "starting dockerd (log: $DOCKERD_LOG, pid file: $DOCKERD_PIDFILE)"
    as_root sh -c "nohup dockerd --pidfile '$DOCKERD_PIDFILE.d' >'$DOCKERD_LOG' 2>&1 & echo \$! >'$DOCKERD_PIDFILE'"
    local waited=0
    until [ -S /var/run/docker.sock ] && docker_env; do
        waited=$((waited + 1))
        [ "$waited" -le "$SOCKET_WAIT_SECONDS" ] || die "dockerd did not answer within ${SOCKET_WAIT_SECONDS}s; see $DOCKERD_LOG"
        sleep 1
    done
    say "dockerd is up (pid $(cat "$DOCKERD_PIDFILE"))"
}

# The first Debian mirror URI the host's apt already uses (deb822 or one-line format).
host_mirror() {
    local uri=""
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        uri="$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources)"
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri="$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)"
    fi
    [ -n "$uri" ] || die "no Debian mirror found in the host's apt sources"
    printf '%s\n' "$uri"
}

step_base() {
    docker_env || die "no container engine answers (run: scripts/docker-setup.sh daemon)"
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "$BASE_IMAGE exists (cached)"
        return 0
    fi
    local mirror work
    mirror="$(host_mirror)"
    work="$(mktemp -d /tmp/bkv-rootfs.XXXXXX)"
    trap "as_root rm -rf '$work'" EXIT
    say "debootstrap $SUITE from the host's mirror into $work"
    as_root debootstrap --variant=minbase --include=python3,python3-venv,libsodium23,ca-certificates \
        "$SUITE" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    as_root rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    say "importing the rootfs as $BASE_IMAGE"
    as_root tar -C "$work/rootfs" -c . | docker import \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    as_root rm -rf "$work"
    trap - EXIT
}

# Stop the dockerd this script started (by its recorded pid), bounded wait.
step_stop() {
    [ -f "$DOCKERD_PIDFILE" ] || { say "no dockerd started by this script"; return 0; }
    local pid waited=0
    pid="$(cat "$DOCKERD_PIDFILE")"
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q '^dockerd '; then
        say "stopping dockerd (pid $pid)"
        as_root kill -TERM "$pid"
        while [ -d "/proc/$pid" ] && [ "$waited" -lt 30 ]; do sleep 1; waited=$((waited + 1)); done
        [ ! -d "/proc/$pid" ] || die "dockerd (pid $pid) still runs after 30s"
    fi
    as_root rm -f "$DOCKERD_PIDFILE"
}

# Wheels are built from a scratch copy of the sources (the Dockerfile's list), so
# no build/ folder is left in the checkout and no stale module slips into a wheel.
step_wheelhouse() {
    local out="$ROOT/deploy/wheelhouse"
    local py="$ROOT/.venv/bin/python"
    [ -x "$py" ] || die "$py is missing: run \`make test\` or \`make demo\` once first"
    local src
    src="$(mktemp -d /tmp/bkv-src.XXXXXX)"
    trap "rm -rf '$src'" EXIT
    (cd "$ROOT" && cp -R pyproject.toml setup.py README.md protos bkv_protocol bkv_ops vault_node \
        chatd_proxy client_sdk bkv_tools "$src/")
    mkdir -p "$src/scripts" "$out"
    cp "$ROOT/scripts/gen_protos.py" "$src/scripts/"
    find "$src" -name __pycache__ -prune -exec rm -rf {} +
    # bkv_api/ must exist before setuptools looks for packages
    "$py" "$src/scripts/gen_protos.py" "$src" >/dev/null
    say "building wheels of the project and its dependencies into deploy/wheelhouse/"
    "$py" -m pip wheel -q --wheel-dir "$out" "$src"
    rm -rf "$src"
    trap - EXIT
}

main() {
    local steps=("$@")
    [ "${#steps[@]}" -gt 0 ] || steps=(engine daemon base wheelhouse)
    for step in "${steps[@]}"; do
        case "$step" in
            engine | daemon | base | wheelhouse | stop) "step_$step" ;;
            *) die "unknown step '$step' (engine, daemon, base, wheelhouse, stop)" ;;
        esac
    done
}

main "$@"
