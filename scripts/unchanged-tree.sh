#!/usr/bin/env bash
# Runs a command (`make test`'s steps) and fails if it changed the work tree as git sees
# it: a tracked file rewritten, or an untracked file left outside .gitignore. Test
# artifacts belong in ignored paths (frontend/test-artifacts) or under /tmp.
#
# It compares the tree after the command with the tree before it, contents included,
# so a developer's own uncommitted changes never trip it; editing files while the tests
# run does. Outside a git work tree (an exported tarball) it only runs the command.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  exec "$@"
fi

# What git reports, then a digest of every changed or untracked file's contents (a file
# already modified before the run keeps its " M" line when the run rewrites it again).
status() { git status --porcelain=v1 --untracked-files=all; }
digest() {
  { git diff --binary HEAD; git ls-files --others --exclude-standard -z | xargs -0 -r sha256sum; } |
    sha256sum
}

status_before=$(status)
digest_before=$(digest)
"$@"
status_after=$(status)
if [ "$status_before" != "$status_after" ]; then
  echo "error: the tests changed the work tree (git status --porcelain, before → after):" >&2
  diff <(printf '%s\n' "$status_before") <(printf '%s\n' "$status_after") >&2 || true
elif [ "$digest_before" != "$(digest)" ]; then
  echo "error: the tests rewrote a file that was already changed or untracked:" >&2
  printf '%s\n' "$status_after" >&2
else
  exit 0
fi
echo "Tests must write to ignored paths or /tmp; \`make screenshots\` refreshes docs/." >&2
exit 1
