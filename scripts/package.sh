#!/usr/bin/env bash
# Builds the Debian package: target/debian/shardmq_<version>-1_<arch>.deb
#
#   scripts/package.sh            # installs cargo-deb first if it is missing
#   sudo apt install ./target/debian/shardmq_*.deb
#
# The packaged /etc/shardmq/shardmq.toml is config/shardmq.toml (every default, with its
# comments) except data_dir, which is /var/lib/shardmq (the unit's StateDirectory=): the
# default ./data would be relative to the service's working directory, /.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "package: installing cargo-deb" >&2
    cargo install cargo-deb --locked
fi

mkdir -p target/deb-assets
sed 's|^data_dir = "./data"$|data_dir = "/var/lib/shardmq"|' config/shardmq.toml \
    >target/deb-assets/shardmq.toml
if ! grep -qx 'data_dir = "/var/lib/shardmq"' target/deb-assets/shardmq.toml; then
    echo "package: config/shardmq.toml has no 'data_dir = \"./data\"' line to replace" >&2
    exit 1
fi

# Built here rather than by cargo-deb, so a build failure shows as cargo's own.
cargo build --release --locked --bin shardmq
# Stripped: the release profile keeps line tables (debug = 1) for profiling, not for a package.
cargo deb --no-build --locked --strip "$@"
ls -1 target/debian/shardmq_*.deb
