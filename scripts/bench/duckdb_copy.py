"""DuckDB doing the same job from a local file, for `cargo bench --bench pipeline -- --compare`.

Reads the benchmark's rows as newline-delimited JSON (typed as the ksqlDB stream's columns) and
writes zstd Parquet partitioned by day with COPY, on 2 threads.

    python duckdb_copy.py ROWS.ndjson OUT_DIR
"""

import sys

import duckdb

COLUMNS = {
    "ROWTIME": "BIGINT", "ID": "BIGINT", "USER_ID": "VARCHAR", "AMOUNT": "DOUBLE",
    "PRICE": "DECIMAL(10, 2)", "CURRENCY": "VARCHAR", "CHANNEL": "VARCHAR", "STATUS": "VARCHAR",
    "AT": "TIMESTAMP", "FLAGGED": "BOOLEAN", "QUANTITY": "INTEGER",
}


def main():
    source, out = sys.argv[1], sys.argv[2]
    connection = duckdb.connect()
    connection.execute("SET threads = 2")
    columns = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in COLUMNS.items()) + "}"
    connection.execute(
        f"COPY (SELECT *, strftime(\"AT\", '%Y-%m-%d') AS day "
        f"FROM read_json('{source}', format = 'newline_delimited', columns = {columns})) "
        f"TO '{out}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (day))"
    )


if __name__ == "__main__":
    main()
