"""The original design's way of doing ksql-lake's job, for `cargo bench --bench pipeline -- --compare`.

Reads a push query from ksqlDB's /query-stream (HTTP/1.1), parses each row's JSON, collects the
rows, builds a pandas DataFrame, converts it with pyarrow and writes one snappy Parquet file per
day of the `AT` column with pq.write_table.

    python python_approach.py KSQLDB_URL SOURCE ROWS OUT_DIR
"""

import http.client
import json
import os
import sys
import urllib.parse

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def main():
    url, source, rows, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    parsed = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    body = json.dumps({
        "sql": f"SELECT * FROM {source} EMIT CHANGES;",
        "properties": {"auto.offset.reset": "earliest"},
    })
    connection.request("POST", "/query-stream", body=body, headers={
        "Content-Type": "application/json",
        "Accept": "application/vnd.ksqlapi.delimited.v1",
    })
    response = connection.getresponse()
    if response.status != 200:
        sys.exit(f"push query refused: {response.status} {response.read()[:500]!r}")
    header = json.loads(response.readline())
    names = header["columnNames"]
    records = []
    while len(records) < rows:
        line = response.readline()
        if not line:
            sys.exit(f"the push query ended after {len(records)} of {rows} rows")
        if line.strip():
            records.append(dict(zip(names, json.loads(line))))
    connection.close()

    frame = pd.DataFrame.from_records(records, columns=names)
    frame["AT"] = pd.to_datetime(frame["AT"])
    for day, rows_of_day in frame.groupby(frame["AT"].dt.strftime("%Y-%m-%d")):
        folder = os.path.join(out, f"day={day}")
        os.makedirs(folder, exist_ok=True)
        table = pa.Table.from_pandas(rows_of_day, preserve_index=False)
        pq.write_table(table, os.path.join(folder, "part-0.parquet"), compression="snappy")


if __name__ == "__main__":
    main()
