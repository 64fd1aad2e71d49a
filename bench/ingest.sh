#!/usr/bin/env bash
# Large-ingest benchmark: one blob through PUT /blobs/<digest> and through an
# upload session in 16 MiB chunks, against the machine's limit for the same
# work measured in the same run on the same file: an fsynced write of the
# bytes (dd conv=fdatasync) and their SHA-256 (openssl). Both can run in
# parallel, so the limit is the slower of the two. Prints a table with the
# ratios and the server's peak RSS.
#
#   bench/ingest.sh [SIZE_MIB]     (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
cargo build --release -q -p artifactstore
bin=$PWD/target/release/artifactstore

work=$(mktemp -d "${TMPDIR:-/tmp}/as-bench.XXXXXX")
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

now() { date +%s.%N; }
mibps() { awk -v m="$1" -v s="$2" 'BEGIN { printf "%.0f", m / s }'; }

file=$work/blob
head -c $((size_mib << 20)) /dev/urandom > "$file"
sha=$(sha256sum "$file" | cut -d' ' -f1)
# Let the source file's own writeback finish so it does not slow the first
# measurement.
sync

t0=$(now); dd if="$file" of="$work/dd.out" bs=16M conv=fdatasync status=none; t1=$(now)
dd_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'); rm -f "$work/dd.out"
t0=$(now); openssl dgst -sha256 "$file" >/dev/null; t1=$(now)
sha_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
limit_s=$(awk -v a="$dd_s" -v b="$sha_s" 'BEGIN { print (a > b) ? a : b }')

"$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" 2> "$work/log" &
server=$!
for _ in $(seq 100); do grep -q 'listening on' "$work/log" && break; sleep 0.1; done
url=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/log" | head -1)

t0=$(now)
curl -sS --fail -T "$file" "$url/blobs/sha256:$sha" >/dev/null
t1=$(now); put_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')

# The same bytes again in a session would dedupe at the end but still be
# received, hashed and written in full; rewrite one byte so it is a new blob.
# The client is bench/session_upload.py: one connection, one write per chunk.
printf 'x' | dd of="$file" bs=1 seek=0 conv=notrunc status=none
sha2=$(sha256sum "$file" | cut -d' ' -f1)
sync
session_s=$(python3 bench/session_upload.py "$url" "$file" "$sha2" 16)
rss=$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$server/status")

echo
echo "large ingest, $size_mib MiB, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%-34s %10s %10s %8s %14s\n' scenario "MiB/s" "limit" ratio "server peak RSS"
printf '%-34s %10s %10s %8s %14s\n' "baseline: dd fdatasync" "$(mibps "$size_mib" "$dd_s")" "" "" ""
printf '%-34s %10s %10s %8s %14s\n' "baseline: openssl sha256" "$(mibps "$size_mib" "$sha_s")" "" "" ""
for row in "PUT /blobs/<digest>:$put_s" "upload session, 16 MiB PATCHes:$session_s"; do
  name=${row%:*}; secs=${row##*:}
  printf '%-34s %10s %10s %8s %11s MiB\n' "$name" "$(mibps "$size_mib" "$secs")" "$(mibps "$size_mib" "$limit_s")" \
    "$(awk -v l="$limit_s" -v s="$secs" 'BEGIN { printf "%.2f", l / s }')" "$rss"
done
