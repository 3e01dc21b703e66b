#!/usr/bin/env bash
# Run a pinned kustomize, installing it on first use.
#
#   bash deploy/kustomize.sh build k8s/overlays/prod     # any kustomize arguments
#
# The binary is built with `go install sigs.k8s.io/kustomize/kustomize/v5@<version>`
# (Go module proxy) into ${OMNI_CACHE_DIR:-$HOME/.cache/omniroute}/bin as
# kustomize-<version>, so a version bump installs next to the old one and a present
# binary costs nothing. The first install needs Go 1.24+ (module proxy access).
# `kubectl kustomize` (an older bundled kustomize) renders the same overlays.
set -euo pipefail

KUSTOMIZE_VERSION="v5.8.1"
CACHE_DIR="${OMNI_CACHE_DIR:-$HOME/.cache/omniroute}"
BIN_DIR="$CACHE_DIR/bin"
BIN="$BIN_DIR/kustomize-$KUSTOMIZE_VERSION"

install_kustomize() {
  if ! command -v go >/dev/null 2>&1; then
    echo "[kustomize] Go is needed to install kustomize $KUSTOMIZE_VERSION (or put it at $BIN)" >&2
    exit 1
  fi
  mkdir -p "$BIN_DIR"
  local staging
  staging="$(mktemp -d "$BIN_DIR/.install.XXXXXX")"
  # shellcheck disable=SC2064  # expand now: the path is fixed
  trap "rm -rf '$staging'" EXIT
  echo "[kustomize] installing kustomize $KUSTOMIZE_VERSION into $BIN_DIR (once)" >&2
  GOBIN="$staging" GOFLAGS="${GOFLAGS:-} -buildvcs=false" \
    go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >&2
  # rename(2) is atomic: concurrent first runs each install and the last one wins.
  mv -f "$staging/kustomize" "$BIN"
  rm -rf "$staging"
  trap - EXIT
  ln -sfn "kustomize-$KUSTOMIZE_VERSION" "$BIN_DIR/kustomize"
}

[[ -x "$BIN" ]] || install_kustomize
exec "$BIN" "$@"
