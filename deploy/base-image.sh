#!/usr/bin/env bash
# Build a Debian bookworm base image with Python 3.11 for deploy/Containerfile
# without pulling from a container registry: debootstrap a minimal root file
# system from the Debian mirror and `podman import` it.
#
#   bash deploy/base-image.sh [IMAGE]      (default: localhost/observer-base:bookworm)
#   podman build --format docker --build-arg BASE=localhost/observer-base:bookworm \
#       -f deploy/Containerfile -t observer-core .
#
# Needs root, debootstrap and podman (apt-get install debootstrap podman).
# Does nothing when IMAGE exists already. MIRROR overrides the Debian mirror.
# The image also trusts the CA certificates this host trusts beyond Debian's
# (e.g. a TLS-intercepting proxy's), so that pip inside the build reaches PyPI
# the way the host does; HOST_CAS=0 leaves them out.
set -euo pipefail

image=${1:-localhost/observer-base:bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")" && pwd)

if podman image exists "$image"; then
    echo "$image exists"
    exit 0
fi
for tool in debootstrap podman python3; do
    command -v "$tool" >/dev/null || {
        echo "base-image.sh: $tool is missing (apt-get install $tool)" >&2
        exit 1
    }
done

rootfs=$(mktemp -d)
chmod 0755 "$rootfs"  # the image's /: mktemp made it 0700, which locks out non-root users
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >&2
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
if [ "${HOST_CAS:-1}" = 1 ]; then
    python3 "$here/extra_cas.py" /etc/ssl/certs/ca-certificates.crt \
        "$rootfs/etc/ssl/certs/ca-certificates.crt" "$rootfs/usr/local/share/ca-certificates"
    chroot "$rootfs" update-ca-certificates >&2
fi
tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "$image built"
