#!/bin/sh
# Lays out the root filesystem of flowgate's container image in OUT: the binary, the shared
# libraries it loads (as `ldd` lists them, at the same paths), the system's CA bundle (the
# roots flowgate trusts for identity providers, `outbound`), a passwd/group naming the
# unprivileged user 65532, and the directories flowgate reads or writes. Nothing else: no shell,
# no package manager, no libraries it does not load.
#
#   sh deploy/image/rootfs.sh target/release/flowgate OUT
#
# The Dockerfile runs it in its build stage; the test suite (tests/e2e/test_image.py) and the
# release pipeline run it beside a binary built outside the image (the Dockerfile's `prebuilt`
# target). POSIX sh, so that it runs in any builder image.
set -eu

if [ "$#" -ne 2 ]; then
  echo "usage: sh deploy/image/rootfs.sh BINARY OUT" >&2
  exit 2
fi
BINARY="$1"
OUT="$2"
BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

[ -x "$BINARY" ] || { echo "rootfs.sh: \`$BINARY\` is not an executable file" >&2; exit 1; }
[ -s "$BUNDLE" ] || { echo "rootfs.sh: no CA bundle at \`$BUNDLE\` (Debian: ca-certificates; or set CA_BUNDLE)" >&2; exit 1; }
command -v ldd >/dev/null 2>&1 || { echo "rootfs.sh: \`ldd\` is missing (Debian: libc-bin)" >&2; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT/usr/local/bin" "$OUT/etc/ssl/certs" "$OUT/etc/flowgate" "$OUT/var/lib/flowgate" "$OUT/tmp"
cp "$BINARY" "$OUT/usr/local/bin/flowgate"
chmod 0755 "$OUT/usr/local/bin/flowgate"

# Every library the dynamic linker would load, and the linker itself, at the path it is looked
# up by (`cp -L`: the file, not a symlink into a tree the image does not have).
libraries="$(ldd "$BINARY" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)"
[ -n "$libraries" ] || { echo "rootfs.sh: \`ldd $BINARY\` listed no library" >&2; exit 1; }
for library in $libraries; do
  mkdir -p "$OUT$(dirname "$library")"
  cp -L "$library" "$OUT$library"
done

cp -L "$BUNDLE" "$OUT/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nflowgate:x:65532:65532:flowgate:/var/lib/flowgate:/sbin/nologin\n' >"$OUT/etc/passwd"
printf 'root:x:0:\nflowgate:x:65532:\n' >"$OUT/etc/group"
# Written by flowgate itself: generated signing keys (when key_dir is not a mounted Secret).
chmod 0755 "$OUT/var/lib/flowgate"
chmod 1777 "$OUT/tmp"
