#!/usr/bin/env bash
# Render every kustomization into deploy/rendered/ (committed: `kubectl apply -f` and
# `podman kube play` take them as they are, and the test suite validates them without
# kustomize). `--check` fails when a committed file is out of date.
set -euo pipefail
cd "$(dirname "$0")"
if command -v kustomize >/dev/null 2>&1; then render=(kustomize build)
else render=(kubectl kustomize); fi
out=rendered
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for target in k8s/base k8s/overlays/cpu k8s/overlays/gpu k8s/overlays/cpu-hpa-in-flight kserve; do
  name="$(echo "${target#k8s/}" | tr / -).yaml"
  name="${name#overlays-}"
  { echo "# Rendered from deploy/$target by deploy/render.sh; do not edit."
    "${render[@]}" "$target"; } > "$tmp/$name"
done
if [ "${1:-}" = "--check" ]; then
  diff -r "$tmp" "$out" && echo "deploy/rendered is up to date"
else
  rm -rf "$out" && mkdir -p "$out" && cp "$tmp"/*.yaml "$out"/ && ls "$out"
fi
