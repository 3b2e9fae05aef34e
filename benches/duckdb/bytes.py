"""Where the bytes of a delivery go: a lake's bytes on disk per delivery, against the
raw request bytes (body + headers) its deliveries arrived with, and per column.

    target/duckdb-venv/bin/python benches/duckdb/bytes.py DATA_DIR [--columns]

Reads the Parquet files with DuckDB (`parquet_metadata`): a column's bytes are its
compressed column chunks; bloom filters, page indexes and footers are the rest of
the file. Run it on a lake no server is compacting (replaced files still on disk
are counted until they are deleted).
"""
import argparse
import os

import duckdb


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir")
    ap.add_argument("--columns", action="store_true", help="also the bytes of each column")
    args = ap.parse_args()

    con = duckdb.connect()
    tables = {}
    for table in ("deliveries", "outcomes"):
        files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(args.data_dir, table))
                 for f in fs if f.endswith(".parquet")]
        if files:
            tables[table] = files
    if "deliveries" not in tables:
        raise SystemExit(f"{args.data_dir}: no deliveries files; is it a hookscope data dir?")

    glob = os.path.join(args.data_dir, "deliveries", "**", "*.parquet")
    n, raw = con.execute(
        f"SELECT count(*), sum(payload_size + octet_length(encode(headers))) "
        f"FROM read_parquet('{glob}')").fetchone()
    total = 0
    per_table = {}
    for table, files in tables.items():
        size = sum(os.path.getsize(f) for f in files)
        per_table[table] = (len(files), size)
        total += size
    print(f"{args.data_dir}: {n:,} deliveries; raw request bytes (body + headers) {raw / n:,.1f} per delivery")
    for table, (count, size) in per_table.items():
        print(f"  {table:<11} {count:>6,} files {size / 2**20:>10,.1f} MiB  {size / n:>7.1f} bytes per delivery")
    print(f"  {'both':<11} {'':>6}       {total / 2**20:>10,.1f} MiB  {total / n:>7.1f} bytes per delivery"
          f"  = 1/{raw / total:.2f} of the raw request bytes")

    if args.columns:
        for table in tables:
            g = os.path.join(args.data_dir, table, "**", "*.parquet")
            rows = con.execute(f"""
                SELECT path_in_schema, sum(total_compressed_size), sum(total_uncompressed_size),
                       sum(coalesce(bloom_filter_length, 0))
                FROM parquet_metadata('{g}') GROUP BY 1 ORDER BY 2 DESC""").fetchall()
            columns = sum(r[1] for r in rows)
            blooms = sum(r[3] for r in rows)
            print(f"\n{table}: column chunks {columns / n:.1f}, bloom filters {blooms / n:.1f}, "
                  f"the rest (page indexes, footers) {(per_table[table][1] - columns - blooms) / n:.1f} bytes per delivery")
            print(f"| column | bytes per delivery | compression | bloom bytes per delivery |")
            print("| --- | ---: | ---: | ---: |")
            for name, comp, uncomp, bloom in rows:
                print(f"| `{name}` | {comp / n:.1f} | {uncomp / max(comp, 1):.1f}× | {bloom / n:.1f} |")


if __name__ == "__main__":
    main()
