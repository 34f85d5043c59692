#!/usr/bin/env bash
# Install the Debian packages the project needs, only when missing.
# libsodium23: ristretto255 + Argon2id (through pysodium); age: interop tests and benchmarks;
# softhsm2: the PKCS#11 token the PKCS#11 master-key backend is tested against;
# chromium: renders the ChatD status page in the headless browser test.
# Extra package names as arguments are installed too (e.g. restic for `make bench-backup`).
set -euo pipefail
need=()
for pkg in libsodium23 age softhsm2 chromium "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
