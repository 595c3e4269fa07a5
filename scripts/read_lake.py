#!/usr/bin/env python3
"""Reads a ksql-lake source folder (or a table's version folder) back with DuckDB and pyarrow and prints what each saw, as JSON.

Used by the interop tests (and handy by hand):
    .venv/bin/python scripts/read_lake.py LAKE_DIR/streams/FEED [--sum COLUMN ...] [--s3 ENDPOINT BUCKET/PREFIX]
The tests compare both readers' counts and sums with what the simulator produced.
"""
import argparse
import json
import os
import sys


def duckdb_view(con, source):
    return f"read_parquet('{source}/**/*.parquet', hive_partitioning = true, union_by_name = true)"


def read_with_duckdb(path, sums, s3):
    import duckdb

    con = duckdb.connect()
    if s3:
        import duckdb_ext  # noqa: F401  (ships the httpfs extension inside the wheel)
        ext_dir = os.path.join(list(duckdb_ext.__path__)[0], "extensions")
        con = duckdb.connect(config={"extension_directory": ext_dir, "autoinstall_known_extensions": False})
        con.sql("LOAD httpfs")
        endpoint, _ = s3
        con.sql(
            "CREATE SECRET s (TYPE s3, KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1', "
            f"ENDPOINT '{endpoint}', URL_STYLE 'path', USE_SSL false)"
        )
    view = duckdb_view(con, path)
    result = {"count": con.sql(f"select count(*) from {view}").fetchone()[0]}
    for column in sums:
        result[f"sum:{column}"] = str(con.sql(f'select sum("{column}") from {view}').fetchone()[0])
    columns = [row[0] for row in con.sql(f"describe select * from {view}").fetchall()]
    partitions = []
    if "year" in columns:  # a stream's hive folders; a table version has none
        partitions = con.sql(
            f"select * exclude (c) from (select year, month, day, count(*) c from {view} group by all order by all)"
        ).fetchall()
    result["partitions"] = [[str(v) for v in row] for row in partitions]
    return result


def manifest_files_python(feed):
    """The committed files of a feed, listed as docs/METADATA.md shows in Python."""
    import pathlib

    feed = pathlib.Path(feed)
    root = json.loads((feed / "_metadata.json").read_text())
    return [
        str(feed / partition["path"] / f["name"])
        for segment in root.get("manifests", [])
        for partition in json.loads((feed / segment["path"]).read_text())["partitions"]
        for f in partition["files"]
    ] + [str(feed / p["path"] / f["name"]) for p in root.get("partitions", []) for f in p["files"]]


def manifest_files_duckdb(feed):
    """The committed files of a feed, listed with the DuckDB query docs/METADATA.md shows."""
    import duckdb

    query = f"""
WITH named AS (
    SELECT '{feed}/' || m.path AS segment
    FROM (SELECT unnest(manifests) AS m FROM read_json_auto('{feed}/_metadata.json'))
), segments AS (
    SELECT filename AS segment, unnest(partitions) AS p
    FROM read_json('{feed}/_manifests/*.json', filename = true, union_by_name = true)
)
SELECT '{feed}/' || p.path || '/' || f.name AS file
FROM (SELECT p, unnest(p.files) AS f FROM segments JOIN named USING (segment));
"""
    con = duckdb.connect()
    return [row[0] for row in con.sql(query).fetchall()]


def read_manifest(feed):
    """What the documented ways of listing a feed's files find, and the rows those files hold."""
    import duckdb

    result = {}
    for reader, files in (("python", manifest_files_python(feed)), ("duckdb", manifest_files_duckdb(feed))):
        rows = 0
        if files:
            listing = ", ".join(f"'{name}'" for name in files)
            con = duckdb.connect()
            rows = con.sql(f"select count(*) from read_parquet([{listing}], union_by_name = true)").fetchone()[0]
        result[reader] = {"files": len(files), "rows": rows}
    return result


def read_with_pyarrow(path, sums):
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    dataset = ds.dataset(path, format="parquet", partitioning="hive", exclude_invalid_files=False,
                         ignore_prefixes=["_", "."])
    table = dataset.to_table()
    result = {"count": table.num_rows}
    for column in sums:
        result[f"sum:{column}"] = str(pc.sum(table.column(column)).as_py())
    result["schema"] = {field.name: str(field.type) for field in table.schema}
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--sum", action="append", default=[])
    parser.add_argument("--s3", nargs=2, metavar=("ENDPOINT", "PATH"))
    args = parser.parse_args()
    out = {"duckdb": read_with_duckdb(args.path if not args.s3 else f"s3://{args.s3[1]}", args.sum, args.s3)}
    if not args.s3:
        out["pyarrow"] = read_with_pyarrow(args.path, args.sum)
        if os.path.exists(os.path.join(args.path, "_metadata.json")) and "/version=v" not in args.path:
            out["manifest"] = read_manifest(args.path)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
