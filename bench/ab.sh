#!/usr/bin/env bash
# A/B of two builds on the hot paths a change to ingest, the commit or the
# read path touches: small-blob uploads (4 KiB, 8 connections, blobs/s), a
# whole 1 GiB upload in one PUT and its whole download (MiB/s). Builds the release binaries of BEFORE and AFTER
# (each in a temporary worktree; AFTER defaults to the working tree), then
# alternates them ROUNDS times on the same file, so both see the same noise.
# Prints one row per run and the median of each column.
#
#   [ROUNDS=5] bench/ab.sh BEFORE [AFTER]
set -euo pipefail
cd "$(dirname "$0")/.."
before_rev=$1; after_rev=${2:-}; rounds=${ROUNDS:-5}
work=$(mktemp -d "${TMPDIR:-/tmp}/as-ab.XXXXXX")
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null
    for w in before after; do git worktree remove --force "$work/$w" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Both revisions build into one target directory (dependencies compile
# once, and again never on a later run); each binary is copied out.
target=$PWD/target/ab
build() { # REV NAME -> path of its binary
    git worktree add -q --detach "$work/$2" "$1"
    (cd "$work/$2" && CARGO_TARGET_DIR=$target cargo build --release -q -p artifactstore)
    cp "$target/release/artifactstore" "$work/$2.bin"
    echo "$work/$2.bin"
}
before_bin=$(build "$before_rev" before)
if [ -n "$after_rev" ]; then
    after_bin=$(build "$after_rev" after)
else
    cargo build --release -q -p artifactstore
    after_bin=$PWD/target/release/artifactstore
fi
declare -A bins=([before]="$before_bin" [after]="$after_bin")

head -c $((1024 << 20)) /dev/urandom > "$work/big"
sha=$(sha256sum "$work/big" | cut -d' ' -f1)
printf '%-8s %6s %16s %18s %18s\n' build round "small PUT/s" "PUT 1 GiB MiB/s" "GET 1 GiB MiB/s"
for round in $(seq "$rounds"); do
    for which in before after; do
        rm -rf "$work/data"
        "${bins[$which]}" serve --listen 127.0.0.1:0 --data-dir "$work/data" 2> "$work/log" &
        server=$!
        for _ in $(seq 100); do grep -q 'listening on' "$work/log" && break; sleep 0.1; done
        url=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/log" | head -1)
        rate=$(python3 bench/small_blobs.py "$url" 3000 4096 8)
        t0=$(date +%s.%N)
        curl -sS --fail -T "$work/big" "$url/blobs/sha256:$sha" > /dev/null
        t1=$(date +%s.%N)
        put=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", 1024 / (b - a) }')
        t0=$(date +%s.%N)
        curl -sS --fail -o /dev/null "$url/blobs/sha256:$sha"
        t1=$(date +%s.%N)
        get=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", 1024 / (b - a) }')
        printf '%-8s %6s %16s %18s %18s\n' "$which" "$round" "$rate" "$put" "$get" | tee -a "$work/rows"
        kill "$server"; wait "$server" 2>/dev/null || true; server=""
    done
done
echo
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for which in before after; do
    small=$(awk -v w="$which" '$1 == w { print $3 }' "$work/rows" | median)
    put=$(awk -v w="$which" '$1 == w { print $4 }' "$work/rows" | median)
    get=$(awk -v w="$which" '$1 == w { print $5 }' "$work/rows" | median)
    echo "median $which: small PUT $small blobs/s, PUT $put MiB/s, GET $get MiB/s"
done
