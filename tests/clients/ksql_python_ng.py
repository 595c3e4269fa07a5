"""Reads the simulator with ksql-python-ng (PyPI, module `ksql`), as a user of that client would.

Usage: ksql_python_ng.py URL STREAM ROWS
Prints one JSON object: the streams listed, the described fields, the rows read, and what
`close_query` did to a second push query: the status ksqlDB answered ("200", "400", or "500",
on which this client raises `ValueError`) and how many more chunks that query sent before it ended.
Any other exception from the client fails the run (exit status 1).
"""

import json
import sys

from ksql import KSQLAPI


def close_from_another_connection(client, stream):
    """Opens a push query, closes it with `close_query` (which always opens a new connection)
    and reads the query to its end."""
    chunks = client.query(f"SELECT * FROM {stream} EMIT CHANGES;", use_http2=True)
    header = ""
    while "\n" not in header:
        header += next(chunks)
    query_id = json.loads(header.split("\n", 1)[0])["queryId"]
    try:
        status = "200" if client.close_query(query_id) else "400"
    except ValueError as error:
        if str(error) != "Return code is 500.":
            raise
        status = "500"
    after = sum(1 for _ in chunks)
    return {"query_id": query_id, "status": status, "chunks_after": after}


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
    close = close_from_another_connection(client, stream)
    print(
        json.dumps(
            {
                "streams": [entry["name"] for entry in streams],
                "fields": [field["name"] for field in described["fields"]],
                "rows": rows,
                "close": close,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
