#!/usr/bin/env bash
# Installs whatever a fresh Debian machine lacks for Crucible, and nothing twice.
# Called by `make run` (no argument) and `make test` (--test: also what the tests
# need: Chromium, PostgreSQL and Redis servers). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
have runc || need_apt+=(runc)
have runsc || need_apt+=(runsc)
have crun || need_apt+=(crun)
# Environments (crucible env import / build): OCI images and Debian root file systems.
have skopeo || need_apt+=(skopeo)
have umoci || need_apt+=(umoci)
have mmdebstrap || need_apt+=(mmdebstrap)
# Dockerfile builds (crucible env build --dockerfile, compose build:): daemonless, as root.
have buildah || need_apt+=(buildah)
have gcc || need_apt+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -f /usr/lib/aarch64-linux-gnu/libc.a ] || need_apt+=(libc6-dev)
have g++ || need_apt+=(g++)
have node || need_apt+=(nodejs)
have npm || need_apt+=(npm)
have javac || need_apt+=(default-jdk-headless)
have mount || need_apt+=(mount)
[ -x /usr/bin/python3 ] || need_apt+=(python3)
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# pip for the host's python3: a sandbox without an environment offers it as `pip`, as
# Inspect's default image does (crucible.engine.spec.COMPAT_LINKS).
[ -x /usr/bin/pip3 ] || need_apt+=(python3-pip)
if [ "$mode" = "--test" ]; then
  have chromium || need_apt+=(chromium)
  have redis-server || need_apt+=(redis-server)
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql)
  have pgrep || need_apt+=(procps)
  # Registries for the pull tests (tests/support/registry_fixtures.py): the distribution
  # registry, which the tests run on 127.0.0.1 (its packaged service is stopped
  # below), and htpasswd (bcrypt) for its auth.
  have docker-registry || need_apt+=(docker-registry)
  have htpasswd || need_apt+=(apache2-utils)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages (${need_apt[*]}); run as root or install them" >&2
    exit 1
  fi
  echo "setup: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  if [[ " ${need_apt[*]} " == *" docker-registry "* ]]; then
    # The package starts a registry on every address's port 5000; the tests need only
    # the binary.
    if [ -d /run/systemd/system ]; then
      systemctl disable --now docker-registry >/dev/null 2>&1 || true
    else
      invoke-rc.d docker-registry stop >/dev/null 2>&1 || true
    fi
  fi
fi

# The virtual environment, from the lock file; reinstalled when the lock or
# pyproject.toml changes (the editable install's entry points and console script are
# written from pyproject.toml at install time, so a moved module needs a reinstall).
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
#
# uv installs it (the lock is uv's own `pip compile`): pip took 229 s of wall and 74 s of
# CPU for the 153 packages into a new venv here, a cold uv 21 s, a warm one 12 s and
# 1.8 s of CPU, and a fresh clone builds its venv at every `make test`. uv is pinned and
# lives in the venv; pip stays there too, for whoever needs it.
#
# With bytecode: uv leaves compiling to the first import (pip compiles at install), and
# where PYTHONDONTWRITEBYTECODE is set, as on this project's machine, no import ever
# writes it, so every process compiled every module it imported again: `crucible keys
# list` took 2.5 s of CPU, 0.8 s of it in compile(), and 1.4 s with bytecode. The
# project's own src/ is compiled at every set-up (only what changed; an edited module
# whose bytecode is stale is compiled in memory, never run stale).
UV_VERSION=0.13.9
stamp=.venv/.lock-installed
installed() { cat requirements.lock pyproject.toml; echo "uv $UV_VERSION --compile-bytecode"; }
if [ ! -f "$stamp" ] || ! installed | cmp -s - "$stamp"; then
  if [ "$(.venv/bin/uv --version 2>/dev/null | cut -d" " -f2)" != "$UV_VERSION" ]; then
    .venv/bin/pip install -q --disable-pip-version-check "uv==$UV_VERSION"
  fi
  # Copies, not hard links: the cache and a clone are often on different file systems.
  export UV_LINK_MODE=copy
  .venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode -r requirements.lock
  .venv/bin/uv pip install -q --python .venv/bin/python --no-deps -e .
  installed >"$stamp"
fi
.venv/bin/python -m compileall -q src >/dev/null

# The web UI: npm packages from the lock file, then a build served at /.
fstamp=frontend/node_modules/.crucible-lock
if [ ! -f "$fstamp" ] || ! cmp -s frontend/package-lock.json "$fstamp"; then
  (cd frontend && npm ci --prefer-offline --no-audit --no-fund --loglevel=error)
  cp frontend/package-lock.json "$fstamp"
fi
# Rebuilt when anything the build reads is newer than it (`make e2e` tests this build).
ui_inputs=(frontend/src frontend/public frontend/index.html frontend/package.json
  frontend/vite.config.ts frontend/tsconfig.json "$fstamp")
if [ ! -f frontend/dist/index.html ] || [ -n "$(find "${ui_inputs[@]}" -newer frontend/dist/index.html -print -quit)" ]; then
  # Vite alone, not `npm run build` (tsc, then Vite): `make test` type-checks the UI in
  # its frontend-test step, and type-checking twice per run cost ~6 s.
  (cd frontend && npx --no-install vite build >/dev/null)
fi
