#!/bin/bash
# regfs over an emulated wide-area link (issue 7).
#
#   tests/bench/wan/wan_bench.sh NAME RTT_MS RATE_MBIT OUTDIR
#
# Creates a network namespace of its own, runs docker-registry, a delaying TCP
# proxy (delay_proxy.py, half the RTT each way), the regfs daemon, httpdirfs
# and all readers in it on 127.0.0.1. Clients reach the registry only through
# the proxy's port; tc (htb + tbf leaves, selected by u32 on the proxy's port)
# on the namespace's lo limits each direction of that port to RATE_MBIT.
# Scenarios, in order: the proxy's own ceiling (no tc) and curl over the link;
# a cold sequential read of a 100 MiB blob through regfs (link utilisation);
# time to first `cat rootfs/etc/os-release` and to `chroot rootfs /bin/sh -c
# true` for skopeo copy + umoci unpack, regfs cold and regfs with the index
# present, with the bytes each moved over the link; cold random 4 KiB read
# latency, regfs vs httpdirfs; `podman pull` + `run` of a ~150 MiB image,
# normal and through `regfs store` (store_bench, next to REGFS in the build
# tree or $STORE_BENCH; WAN_STORE_MIB, WAN_STORE_RUNS; skipped without
# podman); a cold, never-indexed eStargz image through `regfs mount` and
# `regfs store` against skopeo+umoci and podman (toc_bench, next to
# store_bench or $TOC_BENCH; WAN_TOC_MIB, WAN_TOC_RUNS; skipped without podman
# or ctr-remote).
#
# Writes OUTDIR/results.jsonl (one JSON object per figure), OUTDIR/ttfr.tsv,
# OUTDIR/throughput-NAME.tsv and OUTDIR/toc.tsv (inputs of plots.sh), and
# prints each figure.
# Everything it starts (namespace, processes, mounts, temp files) is removed on
# exit, also on failure or interrupt. Needs root, FUSE, iproute2 (ip, tc,
# nsenter), docker-registry, skopeo, umoci, httpdirfs, curl, python3, a
# static busybox (busybox-static) for the image's /bin/sh, and for the store
# scenario podman and runc, for the eStargz scenario also ctr-remote and
# containerd (stargz-snapshotter, containerd).
set -euo pipefail

NAME=${1:?profile name}
RTT_MS=${2:?rtt in ms}
RATE_MBIT=${3:?rate in Mbit/s}
OUT=${4:?output dir}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
REGFS=${REGFS:-$ROOT/build/cli/regfs}
BLOB_MIB=${WAN_BLOB_MIB:-100}
# Few enough that most land in distinct 1 MiB chunks of the 100 MiB blob
# (regfs fetches a whole chunk per miss; later reads in it are local).
RANDOM_READS=${WAN_RANDOM_READS:-50}
PY=$(command -v python3)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

NS=regfs-wan-$$
WORK=$(mktemp -d /tmp/regfs-wan.XXXXXX)
REG_PORT=5000
PROXY_PORT=5001
PIDS=()
MOUNTS=()
FAILED=""

cleanup() {
  set +e
  for m in "${MOUNTS[@]}"; do
    if mountpoint -q "$m"; then
      "$REGFS" umount "$m" >/dev/null 2>&1 || fusermount3 -u "$m" >/dev/null 2>&1 ||
        fusermount3 -uz "$m"
    fi
  done
  # What an interrupted store scenario leaves under WORK (the store's FUSE
  # mounts, podman's overlays), deepest first.
  findmnt -rn -o TARGET | grep "^$WORK/" | sort -r | while read -r m; do umount -l "$m"; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  if ip netns list | grep -qw "$NS"; then
    # Anything still in the namespace was started by this script.
    for p in $(ip netns pids "$NS"); do kill -9 "$p" 2>/dev/null; done
    sleep 0.2
    ip netns del "$NS"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

IN() { nsenter --net=/run/netns/"$NS" "$@"; }
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.4g\", $1 }"; }
log() { echo "[wan $NAME] $*" >&2; }
# report NAME VALUE UNIT [NOTE]
report() {
  printf '  %-62s %10s %s%s\n' "$1:" "$2" "$3" "${4:+  ($4)}"
  printf '{"bench":"wan","profile":"%s","rtt_ms":%s,"rate_mbit":%s,"name":"%s","value":%s,"unit":"%s","note":"%s"}\n' \
    "$NAME" "$RTT_MS" "$RATE_MBIT" "$1" "$2" "$3" "${4:-}" >>"$OUT/results.jsonl"
}
down_bytes() { cut -d' ' -f2 "$WORK/proxy.stats"; }
# Waits for the proxy's counters to settle after a transfer (they are
# written every 100 ms).
settle() { sleep 0.25; }
mount_regfs() {  # CACHE REPO:TAG MNT
  mkdir -p "$3"
  MOUNTS+=("$3")
  IN "$REGFS" mount --tls-verify=false --cache-dir "$1" "127.0.0.1:$PROXY_PORT/$2" "$3"
}
umount_regfs() { "$REGFS" umount "$1" >/dev/null; }
unmount_fuse() {  # MNT: fusermount3 -u, retried while the mount is busy
  for _ in $(seq 50); do
    fusermount3 -u "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  fusermount3 -u "$1"
}

# ---------------------------------------------------------------- namespace
ip netns add "$NS"
IN ip link set lo up

# The registry, listening on REG_PORT (never reached by the clients directly).
cat >"$WORK/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/registry}}
http: {addr: 127.0.0.1:$REG_PORT}
YML
IN docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
PIDS+=($!)
IN "$PY" "$HERE/delay_proxy.py" --listen $PROXY_PORT --target $REG_PORT \
  --delay-ms "$(calc "$RTT_MS / 2")" --stats "$WORK/proxy.stats" \
  --trace "$WORK/proxy.trace" &
PIDS+=($!)
for _ in $(seq 100); do
  IN curl -fs "http://127.0.0.1:$REG_PORT/v2/" >/dev/null && [[ -s $WORK/proxy.stats ]] && break
  sleep 0.1
done
REG=http://127.0.0.1:$REG_PORT

# ---------------------------------------------------------------- test data
# A 100 MiB random blob as the single layer of an image (pushed with curl).
push_blob() {  # REPO FILE -> prints digest
  local digest loc
  digest=sha256:$(sha256sum "$2" | cut -d' ' -f1)
  loc=$(IN curl -fsS -X POST -D - -o /dev/null "$REG/v2/$1/blobs/uploads/" |
    tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
  [[ $loc == http* ]] || loc=$REG$loc
  IN curl -fsS -X PUT -H 'Content-Type: application/octet-stream' -T "$2" \
    "$loc&digest=$digest" -o /dev/null
  echo "$digest"
}
log "pushing a ${BLOB_MIB} MiB blob and the rootfs image"
head -c $((BLOB_MIB << 20)) /dev/urandom >"$WORK/big.bin"
BIG=$(push_blob bench/big "$WORK/big.bin")
BIG_SIZE=$(stat -c %s "$WORK/big.bin")
rm "$WORK/big.bin"
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]}}' \
  "$BIG" >"$WORK/config.json"
CFG=$(push_blob bench/big "$WORK/config.json")
cat >"$WORK/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
 "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$CFG","size":$(stat -c %s "$WORK/config.json")},
 "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$BIG","size":$BIG_SIZE}]}
JSON
IN curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
  --data-binary @"$WORK/manifest.json" "$REG/v2/bench/big/manifests/v1" -o /dev/null

# The rootfs image: two gzip layers of this machine's files, with a static
# busybox as /bin/sh. Built once and kept in OUTDIR/image (it is large).
IMG=$OUT/image
if [[ ! -f $IMG/done ]]; then
  log "building the rootfs image (once) in $IMG"
  rm -rf "$IMG"
  mkdir -p "$IMG"
  umoci init --layout "$IMG/oci" >/dev/null
  umoci new --image "$IMG/oci:v1" >/dev/null
  umoci unpack --image "$IMG/oci:v1" "$IMG/bundle" >/dev/null
  R=$IMG/bundle/rootfs
  tar -C / --ignore-failed-read -cf - etc usr/lib/os-release usr/lib/python3.11 \
    2>/dev/null | tar -C "$R" -xf -
  mkdir -p "$R/usr/bin"
  ln -sfn usr/bin "$R/bin"
  cp /bin/busybox "$R/usr/bin/busybox"
  ln -sf busybox "$R/usr/bin/sh"
  ln -sf busybox "$R/usr/bin/true"
  umoci repack --image "$IMG/oci:v1" "$IMG/bundle" >/dev/null
  tar -C / --ignore-failed-read -cf - usr/share/doc usr/share/perl usr/lib/python3 \
    2>/dev/null | tar -C "$R" -xf -
  umoci repack --image "$IMG/oci:v1" "$IMG/bundle" >/dev/null
  rm -rf "$IMG/bundle"
  touch "$IMG/done"
fi
IN skopeo copy --quiet --dest-tls-verify=false "oci:$IMG/oci:v1" \
  "docker://127.0.0.1:$REG_PORT/bench/rootfs:v1"
IMAGE_BYTES=$(IN skopeo inspect --raw --tls-verify=false \
  "docker://127.0.0.1:$REG_PORT/bench/rootfs:v1" |
  "$PY" -c 'import json,sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))')

echo "wan_bench $NAME: RTT $RTT_MS ms, $RATE_MBIT Mbit/s; blob $BIG_SIZE B;" \
  "rootfs image $IMAGE_BYTES B (layers)"

# ---------------------------------------------------------------- the link
# Scenario 0: the proxy alone (delay, no rate limit) must not be the bottleneck.
t0=$(now)
IN curl -fsS -o /dev/null "http://127.0.0.1:$PROXY_PORT/v2/bench/big/blobs/$BIG"
t1=$(now)
report "proxy alone (delay, no tc): curl 100 MiB" "$(calc "$BIG_SIZE * 8 / ($t1 - $t0) / 1e6")" \
  "Mbit/s" "must exceed $RATE_MBIT"

# Rate: htb root, unlimited default class; the proxy's port in each direction
# goes to its own class with a tbf leaf at RATE_MBIT.
BURST=$((RATE_MBIT * 1000000 / 8 / 250))  # 4 ms of data
((BURST < 131072)) && BURST=131072
IN tc qdisc add dev lo root handle 1: htb default 30 r2q 100
IN tc class add dev lo parent 1: classid 1:10 htb rate "${RATE_MBIT}mbit" ceil "${RATE_MBIT}mbit" \
  burst $BURST cburst $BURST quantum 65536
IN tc class add dev lo parent 1: classid 1:20 htb rate "${RATE_MBIT}mbit" ceil "${RATE_MBIT}mbit" \
  burst $BURST cburst $BURST quantum 65536
IN tc class add dev lo parent 1: classid 1:30 htb rate 40gbit quantum 65536
IN tc qdisc add dev lo parent 1:10 handle 10: tbf rate "${RATE_MBIT}mbit" burst $BURST latency 100ms
IN tc qdisc add dev lo parent 1:20 handle 20: tbf rate "${RATE_MBIT}mbit" burst $BURST latency 100ms
IN tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip sport $PROXY_PORT 0xffff flowid 1:10
IN tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip dport $PROXY_PORT 0xffff flowid 1:20

# Scenario 1: cold sequential read, curl then regfs, with the link's counters
# sampled every 100 ms (proxy trace) for the throughput plot.
mark() { echo "$1 $(now)" >>"$WORK/marks"; }
# Bytes the rate-limited class sent towards the clients, every 100 ms (what
# left the shaper, unlike the proxy's counters, which include what is still in
# socket buffers).
sample_tc() {
  while :; do
    echo "$(now) $(IN tc -s class show dev lo classid 1:10 | awk '/Sent/ {print $2; exit}')"
    sleep 0.1
  done
}
sample_tc >"$WORK/tc.trace" &
SAMPLER=$!
PIDS+=($SAMPLER)
sleep 1
mark curl-start
t0=$(now)
IN curl -fsS -o /dev/null "http://127.0.0.1:$PROXY_PORT/v2/bench/big/blobs/$BIG"
t1=$(now)
mark curl-end
CURL_MBIT=$(calc "$BIG_SIZE * 8 / ($t1 - $t0) / 1e6")
report "curl of the blob over the link" "$CURL_MBIT" "Mbit/s"
report "curl link utilisation" "$(calc "100 * $CURL_MBIT / $RATE_MBIT")" "%"
sleep 1

settle
b0=$(down_bytes)
mark regfs-start
t0=$(now)
mount_regfs "$WORK/cache-seq" bench/big:v1 "$WORK/m-seq"
tm=$(now)
IN cat "$WORK/m-seq/blobs/$BIG" >/dev/null
t1=$(now)
mark regfs-end
settle
b1=$(down_bytes)
umount_regfs "$WORK/m-seq"
REGFS_MBIT=$(calc "$BIG_SIZE * 8 / ($t1 - $t0) / 1e6")
report "regfs mount + cold cat of the blob" "$REGFS_MBIT" "Mbit/s" "timed from the mount"
report "regfs cold sequential link utilisation" "$(calc "100 * $REGFS_MBIT / $RATE_MBIT")" "%" \
  "target >= 70; blob size / (mount + cat time)"
report "regfs cat alone (after the mount returned)" \
  "$(calc "$BIG_SIZE * 8 / ($t1 - $tm) / 1e6")" "Mbit/s"
report "regfs cold read: bytes over the link / blob size" "$(calc "($b1 - $b0) / $BIG_SIZE")" "x"

# Throughput over time for the plot: Mbit/s leaving the shaper at each 100 ms
# sample (over the preceding 0.5 s), time from each read's start.
kill "$SAMPLER" 2>/dev/null
"$PY" - "$WORK/tc.trace" "$WORK/marks" "$NAME" >"$OUT/throughput-$NAME.tsv" <<'PYEOF'
import sys
trace = [tuple(map(float, l.split()[:2])) for l in open(sys.argv[1])
         if len(l.split()) >= 2]
marks = dict((l.split()[0], float(l.split()[1])) for l in open(sys.argv[2]))
print("# tool\tseconds_from_start\tMbit/s (profile %s)" % sys.argv[3])
for tool in ("curl", "regfs"):
    s, e = marks[tool + "-start"], marks[tool + "-end"] + 0.2
    pts = [p for p in trace if s - 0.1 <= p[0] <= e]
    # Mbit/s over the 0.5 s before each sample (single 100 ms steps are
    # jagged: the samples are not evenly spaced).
    j = 0
    for tb, bb in pts:
        if tb < s:
            continue
        while j + 1 < len(pts) and pts[j + 1][0] <= tb - 0.5:
            j += 1
        ta, ba = pts[j]
        if tb > ta:
            print("%s\t%.2f\t%.1f" % (tool, tb - s, (bb - ba) * 8 / (tb - ta) / 1e6))
    print("\n")
PYEOF

# Scenario 2: first read and first command in the rootfs.
ttfr() {  # TOOL PHASE SECONDS
  printf '%s\t%s\t%s\t%s\n' "$NAME" "$1" "$2" "$3" >>"$OUT/ttfr.tsv"
}
RREF=bench/rootfs:v1
# Peer: skopeo copy + umoci unpack.
settle
b0=$(down_bytes)
t0=$(now)
IN skopeo copy --quiet --src-tls-verify=false "docker://127.0.0.1:$PROXY_PORT/$RREF" \
  "oci:$WORK/peer-oci:v1"
umoci unpack --image "$WORK/peer-oci:v1" "$WORK/peer-bundle" >/dev/null
grep -q NAME= "$WORK/peer-bundle/rootfs/etc/os-release"
t1=$(now)
chroot "$WORK/peer-bundle/rootfs" /bin/sh -c true
t2=$(now)
settle
b1=$(down_bytes)
rm -rf "$WORK/peer-oci" "$WORK/peer-bundle"
PEER_CAT=$(calc "$t1 - $t0")
report "skopeo copy + umoci unpack + cat os-release" "$PEER_CAT" "s"
report "skopeo copy + umoci unpack + chroot sh -c true" "$(calc "$t2 - $t0")" "s"
report "skopeo + umoci: bytes over the link" "$((b1 - b0))" "B"
ttfr "skopeo+umoci" cat "$PEER_CAT"
ttfr "skopeo+umoci" sh "$(calc "$t2 - $t0")"

# regfs cold: no index, empty cache.
b0=$(down_bytes)
t0=$(now)
mount_regfs "$WORK/cache-rootfs" "$RREF" "$WORK/m-root"
IN grep -q NAME= "$WORK/m-root/rootfs/etc/os-release"
t1=$(now)
IN chroot "$WORK/m-root/rootfs" /bin/sh -c true
t2=$(now)
umount_regfs "$WORK/m-root"
settle
b1=$(down_bytes)
COLD_CAT=$(calc "$t1 - $t0")
report "regfs cold (no index): mount + cat os-release" "$COLD_CAT" "s"
report "regfs cold: mount + cat + chroot sh -c true" "$(calc "$t2 - $t0")" "s" "sh after the cat"
report "regfs cold: bytes over the link" "$((b1 - b0))" "B"
report "ratio regfs cold / skopeo+umoci (cat)" "$(calc "$COLD_CAT / $PEER_CAT")" "x"
ttfr "regfs cold" cat "$COLD_CAT"
ttfr "regfs cold" sh "$(calc "$t2 - $t0")"

# regfs with the layer indexes present, chunk cache emptied: cat, then (after
# another prune and a fresh mount) the shell command on its own.
"$REGFS" cache prune --chunks-only --max-size 0 --cache-dir "$WORK/cache-rootfs" >/dev/null
b0=$(down_bytes)
t0=$(now)
mount_regfs "$WORK/cache-rootfs" "$RREF" "$WORK/m-root"
IN grep -q NAME= "$WORK/m-root/rootfs/etc/os-release"
t1=$(now)
umount_regfs "$WORK/m-root"
settle
b1=$(down_bytes)
IDX_CAT=$(calc "$t1 - $t0")
"$REGFS" cache prune --chunks-only --max-size 0 --cache-dir "$WORK/cache-rootfs" >/dev/null
t0=$(now)
mount_regfs "$WORK/cache-rootfs" "$RREF" "$WORK/m-root"
IN chroot "$WORK/m-root/rootfs" /bin/sh -c true
t2=$(now)
umount_regfs "$WORK/m-root"
IDX_SH=$(calc "$t2 - $t0")
report "regfs index present, chunks empty: mount + cat os-release" "$IDX_CAT" "s"
report "regfs index present, chunks empty: mount + chroot sh -c true" "$IDX_SH" "s"
report "regfs index present: bytes over the link (cat)" "$((b1 - b0))" "B"
report "ratio regfs index-present / skopeo+umoci (cat)" "$(calc "$IDX_CAT / $PEER_CAT")" "x" \
  "target <= 0.1"
ttfr "regfs index" cat "$IDX_CAT"
ttfr "regfs index" sh "$IDX_SH"

# Scenario 3: cold random 4 KiB reads, regfs vs httpdirfs.
RANDREAD=$(cat <<'PYEOF'
import os, random, sys, time
path, size, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_RDONLY)
rng = random.Random(5)
lat = []
for _ in range(n):
    off = rng.randrange(size // 4096) * 4096
    t = time.monotonic()
    if len(os.pread(fd, 4096, off)) != 4096:
        sys.exit("short read")
    lat.append((time.monotonic() - t) * 1000)
lat.sort()
print("%.3f %.3f" % (lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]))
PYEOF
)
settle
b0=$(down_bytes)
mount_regfs "$WORK/cache-rnd" bench/big:v1 "$WORK/m-rnd"
read -r P50 P99 < <(IN "$PY" -c "$RANDREAD" "$WORK/m-rnd/blobs/$BIG" "$BIG_SIZE" "$RANDOM_READS")
umount_regfs "$WORK/m-rnd"
settle
b1=$(down_bytes)
report "regfs cold random 4 KiB read p50" "$P50" "ms" \
  "$RANDOM_READS reads; a first touch of a chunk fetches the read only, a second the whole chunk"
report "regfs cold random 4 KiB read p99" "$P99" "ms"
report "regfs random reads: bytes over the link" "$((b1 - b0))" "B"
mkdir -p "$WORK/h-rnd"
MOUNTS+=("$WORK/h-rnd")
if IN httpdirfs --single-file-mode "http://127.0.0.1:$PROXY_PORT/v2/bench/big/blobs/$BIG" \
  "$WORK/h-rnd" >"$WORK/httpdirfs.log" 2>&1; then
  b0=$(down_bytes)
  read -r P50 P99 < <(IN "$PY" -c "$RANDREAD" "$WORK/h-rnd/$BIG" "$BIG_SIZE" "$RANDOM_READS")
  unmount_fuse "$WORK/h-rnd"
  settle
  b1=$(down_bytes)
  report "httpdirfs cold random 4 KiB read p50" "$P50" "ms" "$RANDOM_READS reads"
  report "httpdirfs cold random 4 KiB read p99" "$P99" "ms"
  report "httpdirfs random reads: bytes over the link" "$((b1 - b0))" "B"
else
  log "httpdirfs failed: $(tail -3 "$WORK/httpdirfs.log")"
fi

# Scenario 4 (issue 8): time to a container's first command, `podman pull` +
# `podman run ... cat /etc/os-release`, normal vs through `regfs store` (cold,
# and with the layer indexes present), all over the link: store_bench runs in
# the namespace, pushes its image to the registry directly, and podman and
# the store daemon pull through the proxy.
STORE_BENCH=${STORE_BENCH:-$(dirname "$REGFS")/../tests/store_bench}
if [[ -x $STORE_BENCH ]] && command -v podman >/dev/null; then
  log "podman pull + run, normal and through regfs store"
  if ! IN env REGFS_BINARY="$REGFS" REGFS_BENCH_JSON="$WORK/store.jsonl" "$STORE_BENCH" \
    "${WAN_STORE_MIB:-384}" "${WAN_STORE_RUNS:-1}" --registry "$REG" \
    --pull "127.0.0.1:$PROXY_PORT" --profile "$NAME" --link-stats "$WORK/proxy.stats" \
    --work-dir "$WORK" >"$WORK/store.txt"; then
    cat "$WORK/store.txt"
    exit 1
  fi
  grep -E '^store_bench|^  run ' "$WORK/store.txt" | sed 's/^/  /'
  while IFS=$'\t' read -r n v u; do
    note=""
    [[ $n == *"(target <= 0.3)" ]] && n=${n% (target <= 0.3)} && note="target <= 0.3"
    report "podman store: $n" "$v" "$u" "$note"
  done < <("$PY" -c '
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    v = "%d" % r["value"] if r["unit"] == "B" else "%.4g" % r["value"]
    print("%s\t%s\t%s" % (r["name"].split(" ", 1)[1], v, r["unit"]))
' "$WORK/store.jsonl")
else
  log "skipping the podman store scenario: needs podman and $STORE_BENCH"
fi

# Scenario 5 (issue 16): a cold, never-indexed eStargz image (toc_bench, next
# to store_bench; it converts its image with ctr-remote and a private
# containerd in the namespace, pushes it to the registry directly, and regfs,
# skopeo and podman pull through the proxy): `regfs mount` + `cat
# rootfs/etc/os-release` against skopeo+umoci and a normal `podman pull`, and
# `podman pull` + `run` through `regfs store` against a normal pull + run,
# with the bytes each moved over the link (WAN_TOC_MIB of file data in the
# image's middle layer, WAN_TOC_RUNS runs, median).
TOC_BENCH=${TOC_BENCH:-$(dirname "$REGFS")/../tests/toc_bench}
if [[ -x $TOC_BENCH ]] && command -v podman >/dev/null && command -v ctr-remote >/dev/null; then
  log "cold eStargz image: regfs mount and store against skopeo+umoci and podman"
  if ! IN env REGFS_BINARY="$REGFS" REGFS_BENCH_JSON="$WORK/toc.jsonl" "$TOC_BENCH" \
    "${WAN_TOC_MIB:-256}" "${WAN_TOC_RUNS:-1}" --registry "$REG" \
    --pull "127.0.0.1:$PROXY_PORT" --profile "$NAME" --link-stats "$WORK/proxy.stats" \
    --work-dir "$WORK" >"$WORK/toc.txt"; then
    # toc_bench reports what it measured also when a case failed (the
    # store's, say): print its output, report those, fail at the end.
    cat "$WORK/toc.txt"
    FAILED="$FAILED toc_bench"
  fi
  grep -E '^toc_bench|^  run ' "$WORK/toc.txt" | sed 's/^/  /'
  touch "$WORK/toc.jsonl"
  # Each figure, its target moved into the note; the times and bytes also go
  # to toc.tsv (profile, case, seconds, bytes) for plots.sh.
  while IFS=$'\t' read -r n v u note; do
    report "eStargz: $n" "$v" "$u" "$note"
  done < <("$PY" - "$WORK/toc.jsonl" "$NAME" "$OUT/toc.tsv" <<'PYEOF'
import json, re, sys
secs, byts = {}, {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    n = r["name"].split(" ", 1)[1]
    note = ""
    m = re.match(r"(.*?) ?\((target [^)]*)\)(.*)", n)
    if m:
        n, note = (m.group(1) + m.group(3)).strip(), m.group(2)
    v = "%d" % r["value"] if r["unit"] == "B" else "%.4g" % r["value"]
    print("%s\t%s\t%s\t%s" % (n, v, r["unit"], note))
    if n.endswith(": bytes fetched"):
        byts[n[: -len(": bytes fetched")]] = r["value"]
    elif r["unit"] == "s":
        secs[n] = r["value"]
with open(sys.argv[3], "a") as f:
    for n, s in secs.items():
        f.write("%s\t%s\t%.4f\t%d\n" % (sys.argv[2], n, s, byts.get(n, -1)))
PYEOF
  )
else
  log "skipping the eStargz scenario: needs podman, ctr-remote and $TOC_BENCH"
fi

IN tc -s qdisc show dev lo | grep -A1 'tbf 10:' | tail -1 | sed 's/^/  tc tbf (down): /'
if [[ -n $FAILED ]]; then
  log "failed:$FAILED"
  exit 1
fi
log "done"
