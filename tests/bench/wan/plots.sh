#!/bin/bash
# Draws the WAN benchmark's plots (PNG) with gnuplot from the files
# wan_bench.sh wrote into OUTDIR:
#   OUTDIR/ttfr.png            time to first `cat rootfs/etc/os-release` and to
#                              `chroot rootfs /bin/sh -c true`, per profile and tool
#   OUTDIR/throughput-NAME.png link throughput over time during a cold 100 MiB
#                              read, curl vs regfs, one per profile
#
#   tests/bench/wan/plots.sh OUTDIR [LABEL]     (LABEL, e.g. date and machine,
#                                                goes into the titles)
# Fails (non-zero) when gnuplot is missing or an input is absent.
set -euo pipefail
OUT=${1:?output dir}
LABEL=${2:-}
command -v gnuplot >/dev/null || { echo "plots.sh: gnuplot not installed" >&2; exit 1; }
[[ -s $OUT/ttfr.tsv ]] || { echo "plots.sh: no $OUT/ttfr.tsv" >&2; exit 1; }

# ttfr.tsv: profile tool phase seconds -> one row per profile+tool, columns cat/sh.
awk -F'\t' '
  { key = $1 "\\n" $2; if (!(key in seen)) { seen[key] = 1; order[n++] = key }
    v[key, $3] = $4 }
  END { print "# label\tcat\tsh"
        for (i = 0; i < n; i++) printf "\"%s\"\t%s\t%s\n", order[i], v[order[i], "cat"], v[order[i], "sh"] }
' "$OUT/ttfr.tsv" >"$OUT/ttfr-plot.dat"

gnuplot <<GP
set terminal pngcairo size 900,460 font ",9" noenhanced
set output "$OUT/ttfr.png"
set title "Time to first read / first command in the image's rootfs (lower is better)\n$LABEL"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set logscale y
set yrange [0.1:*]
set ylabel "seconds (log scale)"
set grid ytics
set key top right
set xtics font ",8"
set bmargin 5
plot "$OUT/ttfr-plot.dat" using 2:xtic(1) title "cat rootfs/etc/os-release", \
     "" using 3 title "chroot rootfs /bin/sh -c true"
GP

for f in "$OUT"/throughput-*.tsv; do
  name=$(basename "$f" .tsv)
  profile=${name#throughput-}
  gnuplot <<GP
set terminal pngcairo size 900,360 font ",9" noenhanced
set output "$OUT/$name.png"
set title "Cold read of a 100 MiB blob over the link ($profile), 0.5 s moving average\n$LABEL"
set xlabel "seconds from start (regfs: from the mount)"
set ylabel "Mbit/s on the link"
set grid
set key top right
plot "$f" index 0 using 2:3 with steps lw 2 title "curl", \
     "" index 1 using 2:3 with steps lw 2 title "regfs mount + cat"
GP
done
ls "$OUT"/*.png
