#!/usr/bin/env bash
# Migration benchmark: a VM with one disk of SIZE (default 4 GiB), FILL of
# it data (default 0.4), migrated from the XenServer lab to the EC2 lab
# region (EBS direct), and the same disk converted VHD → raw by the disk
# engine (what `ferry image convert` runs), in one run on this machine.
# Prints MB/s of the disk's data (its non-zero 512 KiB blocks) for both,
# the ratio, and the bytes sent against the data blocks.
#
# RUNS (default 1) repeats the whole measurement, each with fresh labs.
#
#   bench/migrate.sh [SIZE_BYTES] [FILL]
source "$(dirname "$0")/../scripts/lib.sh"
ensure_go
SIZE=${1:-4294967296}
FILL=${2:-0.4}
cd "$FERRY_ROOT"
log "migrating a $SIZE-byte disk, fill $FILL: lab pool → lab region"
FERRY_BENCH_SIZE=$SIZE FERRY_BENCH_FILL=$FILL go test ./internal/migrate -run '^$' -bench BenchmarkMigrateXenToAWS -benchtime 1x -count "${RUNS:-1}" -v -timeout 60m |
	grep -E 'bench_test|Benchmark|ok|FAIL'
