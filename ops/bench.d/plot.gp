# ops/bench: throughput and latency over time (gnuplot, Debian gnuplot-nox).
# gnuplot -e "dir='RUN_DIR'; out='FILE.png'; title='...'" ops/bench.d/plot.gp
# Timelines (tally-bench probe --timeline): t_s, events_per_s, p50_ms, p99_ms
set terminal pngcairo size 1200,900 font ",10" noenhanced
set output out
set multiplot layout 2,1 title title
set key top right
set grid
set xlabel "seconds since the consumers started"
set ylabel "events committed per second"
set title "throughput (backlog runs: full speed)"
plot dir.'/rate.tsv' using 1:2 with lines lw 2 title "tally-rate alone", \
     dir.'/agg.tsv'  using 1:2 with lines lw 2 title "tally-aggregate alone", \
     dir.'/e2e.tsv'  using 1:2 with lines lw 2 title "end to end"
set ylabel "event-to-committed latency, ms"
set logscale y
set title "end-to-end latency (paced producer)"
plot dir.'/e2e_half.tsv' using 1:($4>0?$4:1/0) with lines lw 2 title "p99, half load", \
     dir.'/e2e_half.tsv' using 1:($3>0?$3:1/0) with lines lw 1 title "p50, half load", \
     dir.'/e2e_full.tsv' using 1:($4>0?$4:1/0) with lines lw 2 title "p99, full load", \
     dir.'/e2e_full.tsv' using 1:($3>0?$3:1/0) with lines lw 1 title "p50, full load"
unset multiplot
