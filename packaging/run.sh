#!/bin/bash
# Builds regfs and runs it.
#   packaging/run.sh                 the demo: starts a local registry on
#                                    127.0.0.1, pushes a two-layer image built
#                                    from this machine's files, mounts it and
#                                    looks inside with ordinary tools
#   packaging/run.sh ARGS...         runs `regfs ARGS...` (e.g. mount REF DIR)
# Installs its dependencies first (Debian 12, as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

bash packaging/install-deps.sh >&2
cmake -S "$ROOT" -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DREGFS_WERROR=ON >/dev/null
ninja -C build regfs >&2
REGFS=$ROOT/build/cli/regfs

if [[ $# -gt 0 ]]; then exec "$REGFS" "$@"; fi

WORK=$(mktemp -d /tmp/regfs-demo.XXXXXX)
REG_PID=""
cleanup() {
  set +e
  [[ -d "$WORK/mnt" ]] && "$REGFS" umount "$WORK/mnt" 2>/dev/null
  [[ -n "$REG_PID" ]] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# A registry on a free loopback port, storage in the temp dir.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $WORK/registry}}
http: {addr: 127.0.0.1:$PORT}
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done

# A two-layer demo image from this machine's own files, pushed with skopeo.
echo "== building a demo image (umoci) and pushing it (skopeo) to 127.0.0.1:$PORT" >&2
umoci init --layout "$WORK/oci" >/dev/null
umoci new --image "$WORK/oci:demo" >/dev/null
umoci unpack --rootless --image "$WORK/oci:demo" "$WORK/bundle" >/dev/null
R=$WORK/bundle/rootfs
mkdir -p "$R/etc" "$R/usr/share" "$R/bin"
cp /etc/os-release "$R/etc/os-release"
cp -a /usr/share/common-licenses "$R/usr/share/" 2>/dev/null || true
cp /bin/ls /bin/cat "$R/bin/"
echo "hello from layer 0" > "$R/etc/motd"
umoci repack --refresh-bundle --image "$WORK/oci:demo" "$WORK/bundle" >/dev/null
rm "$R/etc/motd"
echo "hello from layer 1" > "$R/hello.txt"
umoci repack --image "$WORK/oci:demo" "$WORK/bundle" >/dev/null
skopeo copy --quiet --dest-tls-verify=false "oci:$WORK/oci:demo" \
  "docker://127.0.0.1:$PORT/regfs/demo:latest"

REF=127.0.0.1:$PORT/regfs/demo:latest
echo "== regfs inspect $REF" >&2
"$REGFS" inspect --tls-verify=false "$REF"
mkdir -p "$WORK/mnt"
echo "== regfs mount --tls-verify=false $REF $WORK/mnt" >&2
"$REGFS" mount --tls-verify=false --cache-dir "$WORK/cache" "$REF" "$WORK/mnt"
cd "$WORK/mnt"
set -x
ls -la
ls -la blobs
sha256sum blobs/*
ls layers layers/* rootfs
ls -la layers/1/etc    # layer 1 deletes etc/motd: a whiteout in the layer...
ls -la rootfs/etc      # ...and no motd in the merged rootfs
cat rootfs/etc/os-release rootfs/hello.txt
cat .regfs/status.json
set +x
cd /
if [[ -t 0 ]]; then
  echo "The demo image is mounted at $WORK/mnt. Press Enter to unmount and clean up." >&2
  read -r _
fi
