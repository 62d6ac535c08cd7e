#!/usr/bin/env bash
# Installs the Debian packages the service and its tests need when they are missing.
set -euo pipefail
# With the argument `sandbox`, only what the service itself needs (`make serve`).
need=()
if [ "${1:-}" != sandbox ]; then
  [ -x /usr/bin/chromium ] || need+=(chromium)
  command -v redis-server >/dev/null || need+=(redis-server)
  # The HTTP load generator of bench/service.py.
  command -v wrk >/dev/null || need+=(wrk)
fi
# The sandbox that untrusted models run in: bubblewrap, prlimit/setpriv, libseccomp.
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v setpriv >/dev/null && command -v prlimit >/dev/null || need+=(util-linux)
ls /usr/lib/*/libseccomp.so.2 >/dev/null 2>&1 || need+=(libseccomp2)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
  echo "!!! missing Debian packages: ${need[*]} (run as root or install them by hand)" >&2
  exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
