# ops/bench.d/proc.sh — CPU of processes from /proc, for the benchmark
# scripts (sourced by ops/bench, ops/bench-latency, ops/bench-peer).

# proc_cpu PID: user + system CPU seconds of the process (all threads)
proc_cpu() {
    awk -v t="$(getconf CLK_TCK)" '{ split($0, a, ") "); split(a[2], f, " "); printf "%.2f", (f[12] + f[13]) / t }' \
        "/proc/$1/stat" 2>/dev/null || echo 0
}

# pg_cpu DB: CPU seconds of the PostgreSQL backends connected to DB
pg_cpu() {
    local pid total=0
    for pid in $(ps -u postgres -o pid=,args= | awk -v db="$1" '$0 ~ ("postgres: [^ ]+ " db " ") { print $1 }'); do
        total=$(awk -v s="$total" -v c="$(proc_cpu "$pid")" 'BEGIN { printf "%.2f", s + c }')
    done
    echo "$total"
}
