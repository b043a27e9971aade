#!/usr/bin/env bash
# Installs whatever a fresh Debian machine lacks for Crucible, and nothing twice.
# Called by `make run` and `make test`; safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v runc >/dev/null || need_apt+=(runc)
command -v runsc >/dev/null || need_apt+=(runsc)
command -v gcc >/dev/null || need_apt+=(gcc libc6-dev)
command -v g++ >/dev/null || need_apt+=(g++)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
command -v javac >/dev/null || need_apt+=(default-jdk-headless)
[ -x /usr/bin/python3 ] || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ "${CRUCIBLE_SETUP_BROWSER:-0}" = 1 ]; then
  command -v chromium >/dev/null || need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages (${need_apt[*]}); run as root or install them" >&2
    exit 1
  fi
  echo "setup: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The virtual environment, from the lock file; reinstalled when the lock changes.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.lock-installed
if [ ! -f "$stamp" ] || ! cmp -s requirements.lock "$stamp"; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.lock
  .venv/bin/pip install -q --no-deps -e .
  cp requirements.lock "$stamp"
fi
