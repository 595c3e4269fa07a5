"""Reads the simulator with ksql-python-ng (PyPI, module `ksql`), as a user of that client would.

Usage: ksql_python_ng.py URL STREAM ROWS
Prints one JSON object: the streams listed, the described key columns and the rows read.
Any exception from the client fails the run (exit status 1).
"""

import json
import sys

from ksql import KSQLAPI


def main() -> int:
    url, stream, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = KSQLAPI(url, timeout=30)
    streams = client.ksql("SHOW STREAMS;")[0]["streams"]
    described = client.ksql(f"DESCRIBE {stream};")[0]["sourceDescription"]
    rows = []
    query = f"SELECT * FROM {stream} EMIT CHANGES;"
    for row in client.query(query, use_http2=True, parse=True, stream_properties={"auto.offset.reset": "earliest"}):
        rows.append(row)
        if len(rows) >= want:
            break
    print(
        json.dumps(
            {
                "streams": [entry["name"] for entry in streams],
                "fields": [field["name"] for field in described["fields"]],
                "rows": rows,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
