#!/bin/sh
# Builds the lab's tiny guest into OUTDIR (`make setup` calls it): Debian's cloud kernel
# (linux-image-cloud-amd64) as vmlinuz, and initramfs.cpio.gz holding busybox (busybox-static),
# the virtio drivers the kernel ships as modules, /init and the static `tally` program.
# Idempotent: everything is built in a scratch folder and moved into place at the end.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build-initramfs.sh OUTDIR}
kernel=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1)
[ -n "$kernel" ] || { echo "build-initramfs: no /boot/vmlinuz-*-cloud-amd64: install linux-image-cloud-amd64" >&2; exit 1; }
version=${kernel#/boot/vmlinuz-}
busybox=/bin/busybox
[ -x "$busybox" ] && "$busybox" --help 2>&1 | head -n 1 | grep -q BusyBox || { echo "build-initramfs: no static busybox: install busybox-static" >&2; exit 1; }
mkdir -p "$out"
scratch=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
root=$scratch/root
mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev" "$root/modules"
cp "$busybox" "$root/bin/busybox"
cp "$here/init" "$root/init"
chmod 0755 "$root/init"
gcc -static -O2 -Wall -o "$root/tally" "$here/tally.c"

# The modules virtio_pci and virtio_net need, dependencies first (modinfo -F depends).
: > "$root/modules/order"
add_module() {
    grep -qx "$1" "$root/modules/order" && return 0
    for dependency in $(modinfo -k "$version" -F depends "$1" | tr ',' ' '); do
        add_module "$dependency"
    done
    file=$(modinfo -k "$version" -n "$1")
    case "$file" in
        (*.ko) cp "$file" "$root/modules/$1.ko" ;;
        (*.ko.xz) xz -dc "$file" > "$root/modules/$1.ko" ;;
        (*.ko.zst) zstd -qdc "$file" > "$root/modules/$1.ko" ;;
        (*.ko.gz) gzip -dc "$file" > "$root/modules/$1.ko" ;;
        (*) echo "build-initramfs: module $1 is $file: not a .ko file" >&2; exit 1 ;;
    esac
    echo "$1" >> "$root/modules/order"
}
for module in virtio_pci virtio_net; do
    if [ "$(modinfo -k "$version" -n "$module")" != "(builtin)" ]; then
        add_module "$module"
    fi
done

(cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 > "$scratch/initramfs.cpio.gz"
cp "$kernel" "$scratch/vmlinuz"
echo "$version" > "$scratch/version"
mv "$scratch/initramfs.cpio.gz" "$scratch/vmlinuz" "$scratch/version" "$out/"
echo "build-initramfs: $out/vmlinuz ($version) and $out/initramfs.cpio.gz"
