#!/usr/bin/env python3
"""hookscope's standard analytic set against DuckDB on the same Parquet files, in one run.

`hookscope bench --format json --results` generates (or reuses) the lake and times
the set; this script then runs the same queries in DuckDB over the lake's files
(`read_parquet` with hive partitioning, as a user would), with the same warm-up and
the same number of timed runs, checks that both return the same rows, and prints
the time per query, the ratio hookscope/DuckDB and the geometric mean.

It also times the cold path: a whole `hookscope query` process answering a trivial
query, against a fresh DuckDB connection in this (already started) Python process.

Run it through benches/duckdb/run.sh, which makes the venv with duckdb.
"""

import argparse
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import time

import duckdb

# The queries whose SQL differs between the dialects; the others run as hookscope
# wrote them. Both sides compute the same thing; percentiles are approximate on both
# (t-digest: DataFusion's approx_percentile_cont, DuckDB's approx_quantile).
DUCKDB_SQL = {
    "latency_by_hour": """
        SELECT source, date_trunc('hour', reported_at) AS hour_start, count(*) AS reports,
          approx_quantile(processing_time_ms, 0.5) AS p50_ms,
          approx_quantile(processing_time_ms, 0.95) AS p95_ms,
          approx_quantile(processing_time_ms, 0.99) AS p99_ms
        FROM outcomes GROUP BY source, hour_start ORDER BY source, hour_start""",
    "retry_intervals": """
        SELECT source, count(*) AS repeats, avg(gap_ms) AS avg_gap_ms,
          min(gap_ms) AS min_gap_ms, max(gap_ms) AS max_gap_ms FROM (
          SELECT source, (epoch_us(received_at) - lag(epoch_us(received_at))
            OVER (PARTITION BY source, dedup_key ORDER BY received_at)) / 1000.0 AS gap_ms
          FROM deliveries) AS gaps WHERE gap_ms IS NOT NULL GROUP BY source ORDER BY source""",
}

# Columns whose values are approximate on both sides (two t-digests disagree most on
# small groups): reported as the share of values within APPROXIMATE_NEAR.
APPROXIMATE = {"p50_ms", "p95_ms", "p99_ms"}
APPROXIMATE_NEAR = 0.05


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hookscope", default="target/release/hookscope", help="the hookscope binary")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--data-dir", help="the lake (default: hookscope bench's)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per query, after one untimed")
    ap.add_argument("--flush-every", help="generate small files as ingest at this interval leaves them (e.g. 10s)")
    ap.add_argument("--query", action="append", default=[], help="only this query (repeatable)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="DuckDB threads")
    ap.add_argument("--json-out", help="also write the whole comparison here")
    args = ap.parse_args()

    data_dir = args.data_dir or f"data/bench-{args.rows}-{args.days}d"
    cmd = [args.hookscope, "bench", "--rows", str(args.rows), "--days", str(args.days),
           "--data-dir", data_dir, "--runs", str(args.runs), "--format", "json", "--results"]
    if args.flush_every:
        cmd += ["--flush-every", args.flush_every]
    for q in args.query:
        cmd += ["--query", q]
    print("$ " + " ".join(cmd), file=sys.stderr)
    hs = json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout)

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET threads = {args.threads}")
    for table in ("deliveries", "outcomes"):
        glob = os.path.join(data_dir, table, "**", "*.parquet")
        # hookscope stores payload_sha256 only where the body is not kept,
        # dedup_key only where it is not the event id, and delivery_lag_ms only
        # where it is not received_at - sent_at, and computes them on read; the
        # view does the same.
        derived = (" REPLACE (coalesce(payload_sha256, sha256(body), "
                   "sha256(from_base64(body_base64)), '') AS payload_sha256, "
                   "coalesce(dedup_key, event_id) AS dedup_key, "
                   "coalesce(delivery_lag_ms, (epoch_us(received_at) - epoch_us(sent_at)) / 1000::DOUBLE) AS delivery_lag_ms)"
                   if table == "deliveries" else "")
        con.execute(f"CREATE VIEW {table} AS SELECT *{derived} "
                    f"FROM read_parquet('{glob}', hive_partitioning = true)")

    rows = []
    for q in hs["queries"]:
        if q["name"].startswith(("saved:", "rollup:")):
            # Saved queries run with now() at the lake's end in hookscope, and rollups
            # are hookscope's own tables; they have no DuckDB twin here.
            continue
        sql = DUCKDB_SQL.get(q["name"], q["sql"])
        times, result, cols = [], None, None
        for run in range(args.runs + 1):
            started = time.perf_counter()
            cur = con.execute(sql)
            fetched = cur.fetchall()
            elapsed = (time.perf_counter() - started) * 1000
            if run == 0:
                cols = [d[0] for d in cur.description]
                result = [dict(zip(cols, r)) for r in fetched]
            else:
                times.append(elapsed)
        duck_ms = statistics.median(times)
        same, note = compare(q.get("result") or [], result)
        rows.append({
            "name": q["name"],
            "hookscope_ms": q["median_ms"],
            "duckdb_ms": duck_ms,
            "ratio": q["median_ms"] / duck_ms if q["median_ms"] else None,
            "scanned_rows": q["scanned_rows"],
            "hookscope_rows_per_s": q["rows_per_s"],
            "duckdb_rows_per_s": q["scanned_rows"] / (duck_ms / 1000) if duck_ms else None,
            "result_rows": q["result_rows"],
            "duckdb_result_rows": len(result),
            "same_result": same,
            "note": note,
            "error": q.get("error"),
        })

    cold = cold_start(args.hookscope, data_dir, con_threads=args.threads, runs=max(args.runs, 5))

    lake = hs["lake"]
    print(f"\nlake {lake['dir']}: {lake['deliveries']:,} deliveries, {lake['outcomes']:,} outcomes, "
          f"{lake['files']:,} files, {lake['bytes'] / 2**20:,.1f} MiB; "
          f"median of {args.runs} runs after one untimed; DuckDB {duckdb.__version__}, {args.threads} threads\n")
    print(f"| query | hookscope | DuckDB | hookscope/DuckDB | rows scanned | hookscope rows/s | DuckDB rows/s | result rows | same result |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    ratios = []
    for r in rows:
        if r["ratio"]:
            ratios.append(r["ratio"])
        print(f"| {r['name']} | {fmt_ms(r['hookscope_ms'])} | {fmt_ms(r['duckdb_ms'])} | "
              f"{r['ratio']:.2f}× | {r['scanned_rows']:,} | {fmt_rate(r['hookscope_rows_per_s'])} | "
              f"{fmt_rate(r['duckdb_rows_per_s'])} | {r['result_rows']} | "
              f"{'yes' if r['same_result'] else 'NO'}{(' (' + r['note'] + ')') if r['note'] else ''} |"
              if r["ratio"] else f"| {r['name']} | error: {r['error']} |")
    geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios)) if ratios else float("nan")
    print(f"\ngeometric mean hookscope/DuckDB: {geo:.2f}× over {len(ratios)} queries; "
          f"highest {max(ratios):.2f}×" if ratios else "")
    print(f"cold: `hookscope query \"SELECT count(*) FROM deliveries\"` (whole process) "
          f"{fmt_ms(cold['hookscope_ms'])}; fresh DuckDB connection + views + the same query "
          f"{fmt_ms(cold['duckdb_ms'])}: {cold['hookscope_ms'] / cold['duckdb_ms']:.2f}×")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"lake": lake, "runs": args.runs, "duckdb": duckdb.__version__,
                       "queries": rows, "geometric_mean": geo, "cold": cold}, f, indent=2, default=str)
    if not all(r["same_result"] for r in rows):
        sys.exit(1)


def cold_start(hookscope, data_dir, con_threads, runs):
    sql = "SELECT count(*) FROM deliveries"
    hs, dk = [], []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([hookscope, "query", sql, "--data-dir", data_dir, "--format", "csv"],
                       check=True, stdout=subprocess.DEVNULL)
        hs.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        con = duckdb.connect()
        con.execute(f"SET threads = {con_threads}")
        glob = os.path.join(data_dir, "deliveries", "**", "*.parquet")
        con.execute(f"CREATE VIEW deliveries AS SELECT * FROM read_parquet('{glob}', hive_partitioning = true)")
        con.execute(sql).fetchall()
        con.close()
        dk.append((time.perf_counter() - started) * 1000)
    return {"hookscope_ms": statistics.median(hs), "duckdb_ms": statistics.median(dk)}


def fmt_ms(ms):
    return "-" if ms is None else (f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.1f} ms")


def fmt_rate(r):
    return "-" if r is None else f"{r / 1e6:,.1f} M"


def norm(v):
    """A value of either engine as something comparable: times as µs since the epoch."""
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.timezone.utc)
        return round(v.timestamp() * 1_000_000)
    if isinstance(v, str) and len(v) >= 19 and v[4] == "-" and v[10] == "T":
        try:
            return norm(dt.datetime.fromisoformat(v.replace("Z", "+00:00")))
        except ValueError:
            return v
    if isinstance(v, bool):
        return v
    if hasattr(v, "__float__") and not isinstance(v, str):
        return float(v)
    return v


def compare(hs_rows, dk_rows):
    """Same rows in the same order, column by column (missing in hookscope's JSON =
    null). Approximate columns are not held to equality: the note says how far apart
    the two engines' estimates are."""
    if len(hs_rows) != len(dk_rows):
        return False, f"{len(hs_rows)} vs {len(dk_rows)} rows"
    approx = []
    for i, (a, b) in enumerate(zip(hs_rows, dk_rows)):
        for col in set(a) | set(b):
            if col in ("date", "hour") and col not in a:
                continue  # DuckDB's hive partition columns
            x, y = norm(a.get(col)), norm(b.get(col))
            if isinstance(x, float) and isinstance(y, float):
                diff = abs(x - y) / max(abs(x), abs(y), 1e-12)
                if col in APPROXIMATE:
                    approx.append(diff)
                elif diff > 1e-6:
                    return False, f"row {i} {col}: {x} vs {y}"
            elif x != y:
                return False, f"row {i} {col}: {x!r} vs {y!r}"
    if not approx:
        return True, ""
    approx.sort()
    within = sum(1 for d in approx if d <= APPROXIMATE_NEAR) / len(approx)
    return True, (f"approximate percentiles: {within:.0%} within {APPROXIMATE_NEAR:.0%} of DuckDB's, "
                  f"median gap {approx[len(approx) // 2]:.1%}")


if __name__ == "__main__":
    main()
