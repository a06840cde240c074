#!/usr/bin/env bash
# Side-by-side conversion benchmark: ferry and qemu-img convert, the same
# inputs, the same machine, one run. Prints per pair the wall time of each,
# the ratio ferry/qemu-img (below 1 means ferry is faster) and both peak RSS.
#
#   bench/convert.sh [SIZE] [FILL] [PAIRS...]
#
# SIZE defaults to 4G, FILL (fraction of the disk holding data) to 0.4.
# PAIRS default to all of: raw-qcow2 qcow2-raw raw-vhd raw-vhdfixed
# vhd-qcow2 raw-qcow2c raw-vmdkstream qcow2-vmdkstream vmdkstream-raw
# raw-vhdx raw-vdi. Each pair runs RUNS times (default 3), ferry and
# qemu-img alternating, each run from a warm page cache after a sync; the
# table shows the medians. Work files go to bench/out (removed at the end
# unless KEEP=1).
source "$(dirname "$0")/../scripts/lib.sh"
ensure_go
ensure_pkgs qemu-img:qemu-utils /usr/bin/time:time
build_ferry
FERRY=$FERRY_ROOT/bin/ferry
SIZE=${1:-4G}
FILL=${2:-0.4}
shift $(( $# > 2 ? 2 : $# ))
PAIRS=("$@")
[ ${#PAIRS[@]} -eq 0 ] && PAIRS=(raw-qcow2 qcow2-raw raw-vhd raw-vhdfixed vhd-qcow2 raw-qcow2c raw-vmdkstream qcow2-vmdkstream vmdkstream-raw raw-vhdx raw-vdi)
OUT=$FERRY_ROOT/bench/out
rm -rf "$OUT" && mkdir -p "$OUT"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$OUT"' EXIT

log "generating $SIZE disk, fill $FILL"
"$FERRY" image generate --fill "$FILL" --seed 7 "$OUT/src.raw" "$SIZE"
DATA=$(du -B1 "$OUT/src.raw" | cut -f1)

# inputs in other formats, written by qemu-img so both tools read the same
prep() { # name qemu-args...
	[ -e "$OUT/$1" ] && return
	local name=$1; shift
	qemu-img convert -f raw "$@" "$OUT/src.raw" "$OUT/$name"
}

# measure CMD...: prints "wall_seconds rss_kib cpu_seconds"
measure() {
	sync
	cat "$OUT"/src.* >/dev/null 2>&1 || true
	/usr/bin/time -f '%e %M %U %S' -o "$OUT/time" "$@" >/dev/null 2>"$OUT/err" || { cat "$OUT/err" >&2; echo "FAIL"; return; }
	awk '{ printf "%s %s %.2f\n", $1, $2, $3 + $4 }' "$OUT/time"
}

RUNS=${RUNS:-3}
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

printf '%-18s %9s %9s %7s %9s %9s %7s %11s %11s %10s\n' pair ferry_s qemu_s ratio ferry_cpu qemu_cpu cpu_rat ferry_rss qemu_rss MB/s_ferry
for pair in "${PAIRS[@]}"; do
	case $pair in
	raw-qcow2)        in=src.raw;   qf=raw;   ff=(-O qcow2);                           qa=(-O qcow2) ;;
	qcow2-raw)        prep in.qcow2 -O qcow2; in=in.qcow2; qf=qcow2; ff=(-O raw);    qa=(-O raw) ;;
	raw-vhd)          in=src.raw;   qf=raw;   ff=(-O vhd -o subformat=dynamic);        qa=(-O vpc -o subformat=dynamic,force_size=on) ;;
	raw-vhdfixed)     in=src.raw;   qf=raw;   ff=(-O vhd -o subformat=fixed);          qa=(-O vpc -o subformat=fixed,force_size=on) ;;
	vhd-qcow2)        prep in.vhd -O vpc -o subformat=dynamic,force_size=on; in=in.vhd; qf=vpc; ff=(-O qcow2); qa=(-O qcow2) ;;
	raw-qcow2c)       in=src.raw;   qf=raw;   ff=(-c -O qcow2);                        qa=(-c -O qcow2) ;;
	raw-vmdkstream)   in=src.raw;   qf=raw;   ff=(-O vmdk -o subformat=streamOptimized); qa=(-O vmdk -o subformat=streamOptimized) ;;
	qcow2-vmdkstream) prep in.qcow2 -O qcow2; in=in.qcow2; qf=qcow2; ff=(-O vmdk -o subformat=streamOptimized); qa=(-O vmdk -o subformat=streamOptimized) ;;
	vmdkstream-raw)   prep in.vmdk -O vmdk -o subformat=streamOptimized; in=in.vmdk; qf=vmdk; ff=(-O raw); qa=(-O raw) ;;
	raw-vhdx)         in=src.raw;   qf=raw;   ff=(-O vhdx);                            qa=(-O vhdx) ;;
	raw-vdi)          in=src.raw;   qf=raw;   ff=(-O vdi);                             qa=(-O vdi) ;;
	*) echo "unknown pair $pair" >&2; exit 2 ;;
	esac
	fts=() frs=() qts=() qrs=() fcs=() qcs=() failed=
	for _ in $(seq "$RUNS"); do
		read -r fs frss fc < <(measure "$FERRY" image convert "${ff[@]}" "$OUT/$in" "$OUT/ferry.out")
		rm -f "$OUT/ferry.out"
		read -r qs qrss qc < <(measure qemu-img convert -f "$qf" "${qa[@]}" "$OUT/$in" "$OUT/qemu.out")
		rm -f "$OUT/qemu.out"
		if [ "$fs" = FAIL ] || [ "$qs" = FAIL ]; then failed=1; break; fi
		fts+=("$fs") frs+=("$frss") qts+=("$qs") qrs+=("$qrss") fcs+=("$fc") qcs+=("$qc")
	done
	if [ -n "$failed" ]; then
		printf '%-18s %10s %10s\n' "$pair" "$fs" "$qs"
		continue
	fi
	fs=$(printf '%s\n' "${fts[@]}" | median) qs=$(printf '%s\n' "${qts[@]}" | median)
	fc=$(printf '%s\n' "${fcs[@]}" | median) qc=$(printf '%s\n' "${qcs[@]}" | median)
	frss=$(printf '%s\n' "${frs[@]}" | sort -g | tail -n1) qrss=$(printf '%s\n' "${qrs[@]}" | sort -g | tail -n1)
	awk -v p="$pair" -v f="$fs" -v q="$qs" -v fc="$fc" -v qc="$qc" -v fr="$frss" -v qr="$qrss" -v d="$DATA" 'BEGIN {
		printf "%-18s %9.2f %9.2f %7.2f %9.2f %9.2f %7.2f %7.0f MiB %7.0f MiB %10.0f\n", p, f, q, (q > 0 ? f/q : 0), fc, qc, (qc > 0 ? fc/qc : 0), fr/1024, qr/1024, (f > 0 ? d/1e6/f : 0) }'
done
log "data in the source: $((DATA / 1000000)) MB; wall and CPU (user+sys) seconds are medians of $RUNS runs, RSS the highest; ratio = ferry / qemu-img"
