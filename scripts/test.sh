#!/usr/bin/env bash
# The whole test suite: unit tests, and the integration tests in tests/ that build network
# namespaces and need root. Calls scripts/setup.sh first, so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo test --workspace --locked "$@"
