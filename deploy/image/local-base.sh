#!/usr/bin/env bash
# Build a minimal Debian bookworm image with Python 3.11 from Debian's mirror and import it as
# a local image, for hosts that reach Debian but no container registry. Needs root,
# debootstrap and podman (or docker). Usage: deploy/image/local-base.sh [IMAGE_NAME]
set -euo pipefail
name="${1:-localhost/mnist-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
engine="$(command -v podman || command -v docker)"
rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/mnist-base.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT
# python-is-python3: the Dockerfile calls `python`, as in the official python images.
debootstrap --variant=minbase \
  --include=python3,python3-venv,python-is-python3,ca-certificates \
  bookworm "$rootfs" "$mirror" >/dev/null
# The host's extra CA certificates (a TLS-intercepting proxy's, say), so pip in the build trusts
# what the host trusts.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  chroot "$rootfs" update-ca-certificates >/dev/null
fi
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* \
  "$rootfs"/usr/share/man/*
tar -C "$rootfs" -c . | "$engine" import --change 'CMD ["python3"]' - "$name" >/dev/null
echo "$name"
