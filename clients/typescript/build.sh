#!/usr/bin/env bash
# Build the TypeScript client: npm ci (pinned devDependencies from package-lock.json,
# cache under ~/.cache/agentvm/npm), then dist/ (esbuild bundle + tsc declarations).
# Idempotent: each stage is skipped while its inputs are unchanged. Prints nothing
# on success but what it does. Usage: clients/typescript/build.sh [--force]
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "clients/typescript: node and npm are needed (apt-get install nodejs npm)" >&2
    exit 1
fi
CACHE="${npm_config_cache:-$HOME/.cache/agentvm/npm}"
mkdir -p "$CACHE"

# One build at a time (setup and a test may both call this).
exec 9>"$CACHE/.agentvm-client-build.lock"
command -v flock >/dev/null 2>&1 && flock 9

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

deps_hash="$(hash_of package.json package-lock.json)"
if [[ "${1:-}" == "--force" || ! -d node_modules \
    || "$(cat node_modules/.agentvm-deps 2>/dev/null || true)" != "$deps_hash" ]]; then
    echo "clients/typescript: npm ci" >&2
    npm ci --no-audit --no-fund --loglevel=error --cache "$CACHE" >&2
    echo "$deps_hash" > node_modules/.agentvm-deps
fi

inputs=(package.json package-lock.json tsconfig.json scripts/build.mjs)
while IFS= read -r -d '' f; do inputs+=("$f"); done < <(find src -type f -print0 | sort -z)
build_hash="$(hash_of "${inputs[@]}")"
if [[ "${1:-}" == "--force" || ! -f dist/agentvm-client.mjs \
    || "$(cat dist/.agentvm-build 2>/dev/null || true)" != "$build_hash" ]]; then
    echo "clients/typescript: building dist/" >&2
    node scripts/build.mjs >&2
    echo "$build_hash" > dist/.agentvm-build
fi
