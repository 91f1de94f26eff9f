#!/usr/bin/env bash
# Installs what is missing, then runs every check and test: formatting, clippy, rustdoc's
# warnings (broken links, unescaped <tags>), unit tests and
# the root integration tests on the lab (real etcd, real agents, real kernel, in namespaces).
# Usage (as root): ./deploy/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install-deps.sh

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

echo "== build"
cargo build --workspace --bins --locked

echo "== tests (lab tests run one at a time)"
start=$(date +%s)
cargo test --workspace --locked -- --test-threads=1
echo "tests took $(( $(date +%s) - start ))s"

left=$(ip netns list | awk '{print $1}' | grep -E '^weft' || true)
if [ -n "$left" ]; then
  echo "error: namespaces left behind by the tests: $left" >&2
  exit 1
fi
echo "no namespaces left behind"
