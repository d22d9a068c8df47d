#!/bin/bash
# Draws the WAN benchmark's plots (PNG) with gnuplot from the files
# wan_bench.sh wrote into OUTDIR:
#   OUTDIR/ttfr.png            time to first `cat rootfs/etc/os-release` and to
#                              `chroot rootfs /bin/sh -c true`, per profile and tool
#   OUTDIR/throughput-NAME.png link throughput over time during a cold 100 MiB
#                              read, curl vs regfs, one per profile
#   OUTDIR/toc.png             a cold eStargz image (toc.tsv, when present):
#                              time to first read / container start and bytes
#                              over the link, regfs mount and store against
#                              skopeo+umoci and podman, per profile
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
if [[ -s $OUT/toc.tsv ]]; then
  # toc.tsv: profile case seconds bytes -> one row per case, a column per
  # profile: seconds in toc-time.dat, MiB in toc-bytes.dat ("?" = not measured).
  awk -F'\t' -v out="$OUT" '
    { gsub(/ copy| unpack/, "", $2); gsub(/ \+ /, "+", $2)  # short labels
      if (!($1 in sp)) { sp[$1] = 1; prof[np++] = $1 }
      if (!($2 in sc)) { sc[$2] = 1; cs[nc++] = $2 }
      t[$2, $1] = $3; b[$2, $1] = ($4 < 0 ? "?" : sprintf("%.3f", $4 / 1048576)) }
    END { for (f = 0; f < 2; f++) {
            file = out (f ? "/toc-bytes.dat" : "/toc-time.dat")
            printf "case" > file
            for (j = 0; j < np; j++) printf "\t\"%s\"", prof[j] > file
            printf "\n" > file
            for (i = 0; i < nc; i++) {
              printf "\"%s\"", cs[i] > file
              for (j = 0; j < np; j++) {
                k = (cs[i] SUBSEP prof[j])
                printf "\t%s", (k in t) ? (f ? b[k] : t[k]) : "?" > file
              }
              printf "\n" > file
            }
          }
          print np }
  ' "$OUT/toc.tsv" >"$OUT/toc-nprof"
  gnuplot <<GP
set terminal pngcairo size 900,700 font ",9" noenhanced
set output "$OUT/toc.png"
set multiplot layout 2,1 title "Cold, never-indexed eStargz image (lower is better)\n$LABEL"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set datafile missing "?"
set logscale y
set grid ytics
set key top left autotitle columnhead
set xtics font ",8"
set title "time to first read (cat rootfs/etc/os-release) / container start (pull + run)"
set ylabel "seconds (log scale)"
plot for [i=2:$(( $(cat "$OUT/toc-nprof") + 1 ))] "$OUT/toc-time.dat" using i:xtic(1)
set title "bytes over the link"
set ylabel "MiB (log scale)"
plot for [i=2:$(( $(cat "$OUT/toc-nprof") + 1 ))] "$OUT/toc-bytes.dat" using i:xtic(1)
unset multiplot
GP
  rm -f "$OUT/toc-nprof"
fi
ls "$OUT"/*.png
