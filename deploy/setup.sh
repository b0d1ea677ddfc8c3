#!/usr/bin/env bash
# Creates the venv with kubernetes-validate (PyPI, pinned; it carries the Kubernetes
# API schemas, so validating needs no network) outside the clone, once.
# Prints the path of the kubernetes-validate command.
set -euo pipefail
KUBERNETES_VALIDATE_VERSION=1.37.0
venv="${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}/kubernetes-validate-venv"
if [ ! -x "$venv/bin/kubernetes-validate" ] || ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2
fi
echo "$venv/bin/kubernetes-validate"
