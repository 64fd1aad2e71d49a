#!/usr/bin/env bash
# A/B of two builds on the two hot paths a change to the commit or read path
# touches: small-blob uploads (4 KiB, 8 connections, blobs/s) and a whole
# 1 GiB download (MiB/s). Builds the release binary of REV (in a temporary
# worktree) and of the working tree, then alternates them ROUNDS times on
# the same file, so both see the same noise. Prints one row per run and the
# median of each column.
#
#   bench/ab.sh REV [ROUNDS]       (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
rev=$1; rounds=${2:-5}
work=$(mktemp -d "${TMPDIR:-/tmp}/as-ab.XXXXXX")
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null
    git worktree remove --force "$work/before" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

git worktree add -q --detach "$work/before" "$rev"
(cd "$work/before" && cargo build --release -q -p artifactstore)
cargo build --release -q -p artifactstore
declare -A bins=([before]="$work/before/target/release/artifactstore" [after]="$PWD/target/release/artifactstore")

head -c $((1024 << 20)) /dev/urandom > "$work/big"
sha=$(sha256sum "$work/big" | cut -d' ' -f1)
printf '%-8s %6s %16s %18s\n' build round "small PUT/s" "GET 1 GiB MiB/s"
for round in $(seq "$rounds"); do
    for which in before after; do
        rm -rf "$work/data"
        "${bins[$which]}" serve --listen 127.0.0.1:0 --data-dir "$work/data" 2> "$work/log" &
        server=$!
        for _ in $(seq 100); do grep -q 'listening on' "$work/log" && break; sleep 0.1; done
        url=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/log" | head -1)
        rate=$(python3 bench/small_blobs.py "$url" 3000 4096 8)
        curl -sS --fail -T "$work/big" "$url/blobs/sha256:$sha" > /dev/null
        t0=$(date +%s.%N)
        curl -sS --fail -o /dev/null "$url/blobs/sha256:$sha"
        t1=$(date +%s.%N)
        get=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", 1024 / (b - a) }')
        printf '%-8s %6s %16s %18s\n' "$which" "$round" "$rate" "$get" | tee -a "$work/rows"
        kill "$server"; wait "$server" 2>/dev/null || true; server=""
    done
done
echo
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for which in before after; do
    put=$(awk -v w="$which" '$1 == w { print $3 }' "$work/rows" | median)
    get=$(awk -v w="$which" '$1 == w { print $4 }' "$work/rows" | median)
    echo "median $which: small PUT $put blobs/s, GET $get MiB/s"
done
