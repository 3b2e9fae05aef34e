#!/usr/bin/env bash
# User-space instructions per delivery, counted by valgrind's callgrind: a measure of
# the server's own CPU work that does not move with the machine's load, so two builds
# can be compared on a noisy VM where a throughput difference of a few percent is lost
# in the noise.
#
#   benches/instructions.sh [BINARY ...]      # default: target/release/hookscope
#
# Each binary serves a temporary lake under callgrind and receives N1, then N2,
# ~1 KB JSON deliveries posted one after another over one keep-alive connection (so
# every delivery is its own WAL group commit), then is stopped with SIGINT, which
# flushes the buffer to Parquet. The difference of the two totals divided by N2 - N1
# is the cost of one delivery — receive, WAL, buffer and its share of the flush —
# without start-up. The kernel's work (TCP, fdatasync) is not counted.
#
# Under valgrind the CPU has no SHA extensions, so SHA-256 runs in software
# (~50k instructions per 1 KB body, about 20 times the hardware cost); the line
# "without sha256" leaves it out.
#
# Needs valgrind (Debian: valgrind), python3 and curl. Takes ~1 minute per binary.
set -euo pipefail

N1=${N1:-500}
N2=${N2:-2500}
bins=("$@")
[ ${#bins[@]} -eq 0 ] && bins=(target/release/hookscope)

post() { # port n
    python3 - "$1" "$2" <<'EOF'
import http.client, json, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    body = json.dumps({"id": f"evt_{i:024}", "type": "invoice.paid",
                       "data": {"object": {"amount": 1000 + i, "pad": "x" * 800}}}).encode()
    conn.request("POST", "/webhook/bench", body=body,
                 headers={"content-type": "application/json", "user-agent": "bench/1.0"})
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"delivery {i}: HTTP {r.status}")
EOF
}

# Prints "<total Ir> <software sha256 Ir>" for one binary and n deliveries.
count() { # bin n
    local dir port pid
    dir=$(mktemp -d)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
        "$1" serve --listen "127.0.0.1:$port" --data-dir "$dir/lake" >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do
        curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break
        kill -0 "$pid" 2>/dev/null || { cat "$dir/log" >&2; exit 1; }
        sleep 0.5
    done
    post "$port" "$2"
    kill -INT "$pid"
    wait "$pid" || true
    callgrind_annotate "$dir/cg.out" 2>/dev/null | awk '
        /PROGRAM TOTALS/ { gsub(",", "", $1); total = $1 }
        /sha2::sha256::soft::compress/ { gsub(",", "", $1); sha = $1 }
        END { print total + 0, sha + 0 }'
    rm -rf "$dir"
}

for bin in "${bins[@]}"; do
    read -r t1 s1 < <(count "$bin" "$N1")
    read -r t2 s2 < <(count "$bin" "$N2")
    n=$((N2 - N1))
    if [ "$s2" -eq 0 ]; then
        # Release binaries are stripped: no symbol names the SHA-256 code.
        echo "$bin: $(((t2 - t1) / n)) instructions per delivery (N = $N1, $N2; no symbols, so no figure without sha256: build with CARGO_PROFILE_RELEASE_STRIP=none for it)"
    else
        echo "$bin: $(((t2 - t1) / n)) instructions per delivery, $(((t2 - t1 - s2 + s1) / n)) without sha256 (N = $N1, $N2)"
    fi
done
