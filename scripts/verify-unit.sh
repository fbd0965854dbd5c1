#!/usr/bin/env bash
# Checks dist/shardmq.service with `systemd-analyze verify` (syntax, known settings,
# ExecStart executable). Where the unit's /usr/bin/shardmq is not installed, verifies a
# copy whose ExecStart points at $SHARDMQ_BIN (default: target/debug/shardmq).
# Skips, saying so, where systemd-analyze is missing (apt-get install systemd), unless
# CI_REQUIRE_SYSTEMD_ANALYZE=1 (CI), where that fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
unit="$root/dist/shardmq.service"
if ! command -v systemd-analyze >/dev/null; then
    if [[ ${CI_REQUIRE_SYSTEMD_ANALYZE:-0} = 1 ]]; then
        echo "verify-unit: systemd-analyze not found (apt-get install systemd)" >&2
        exit 1
    fi
    echo "verify-unit: systemd-analyze not found; unit not verified (apt-get install systemd)"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [[ ! -x /usr/bin/shardmq ]]; then
    bin=${SHARDMQ_BIN:-$root/target/debug/shardmq}
    [[ -x $bin ]] || { echo "verify-unit: no $bin; build first (cargo build)" >&2; exit 1; }
    sed "s|^ExecStart=/usr/bin/shardmq|ExecStart=$bin|" "$unit" >"$tmp/shardmq.service"
    unit="$tmp/shardmq.service"
fi
# verify prints problems (also ones in other units it loads) and exits non-zero on ours.
out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out" >&2; exit 1; }
# Warnings about our unit (unknown keys, bad values) do not change the exit status.
if grep -F "shardmq.service" <<<"$out" >&2; then
    echo "verify-unit: warnings above" >&2
    exit 1
fi
echo "verify-unit: $(basename "$unit") ok (systemd $(systemd-analyze --version | head -1 | awk '{print $2}'))"
