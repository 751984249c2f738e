#!/usr/bin/env bash
# Make sure the Debian packages the build and the tests need are present.
#   scripts/ensure-system.sh python     venv + headers + C compiler for the Cython build
#   scripts/ensure-system.sh mosquitto  the MQTT broker the tests and the demo start
#   scripts/ensure-system.sh chromium   headless browser for the local page's test (optional:
#                                       without it that test skips, except under CI)
# As root it installs what is missing with apt-get (running `apt-get update` once first);
# otherwise it says what to install and exits 1. It never installs what is already there.
set -euo pipefail
PY=${PY:-python3}

need=()
case "${1:-}" in
  python)
    "$PY" -c 'import venv, ensurepip' 2>/dev/null || need+=("python3-venv")
    "$PY" - <<'PYEOF' 2>/dev/null || need+=("python3-dev")
import os, sysconfig, sys
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PYEOF
    command -v cc >/dev/null 2>&1 || need+=("build-essential")
    ;;
  mosquitto)
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=("mosquitto")
    ;;
  chromium)
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=("chromium")
    ;;
  *)
    echo "usage: $0 python|mosquitto|chromium" >&2; exit 2 ;;
esac

[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "edge-agent setup: missing Debian packages: ${need[*]}" >&2
  echo "edge-agent setup: not root, so not installing them; run: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "edge-agent setup: missing ${need[*]} and no apt-get here; install them with your package manager" >&2
  exit 1
fi
echo "edge-agent setup: installing ${need[*]} with apt-get (as root)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
if [ "${1}" = mosquitto ]; then
  # Debian starts a system broker on 1883 when it can; our tests and demo run their own
  # on free ports, so the system one is left as the package set it up.
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { echo "edge-agent setup: mosquitto still missing after apt-get" >&2; exit 1; }
fi
if [ "${1}" = chromium ]; then
  command -v chromium >/dev/null 2>&1 || { echo "edge-agent setup: chromium still missing after apt-get" >&2; exit 1; }
fi
echo "edge-agent setup: installed ${need[*]}" >&2
