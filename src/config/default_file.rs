//! The complete, commented config printed by `ksql-lake config default`. A test checks that it
//! parses and equals the built-in defaults, so it cannot drift from the code.

pub const DEFAULT_CONFIG: &str = r#"# ksql-lake configuration.
# Every key can also be set from the environment: KSQL_LAKE_<SECTION>__<KEY>, for example
# KSQL_LAKE_KSQLDB__PASSWORD or KSQL_LAKE_FEEDS__TRANSACTION_STREAM__PARTITIONING.
# The environment wins over this file. Sizes: B, KiB, MiB, GiB (or KB, MB, GB). Durations: 30s, 5m, 1h.

[ksqldb]
# The ksqlDB server (http:// or https://).
url = "http://127.0.0.1:8088"
# Basic auth (Confluent Cloud: API key and secret). Prefer KSQL_LAKE_KSQLDB__PASSWORD for the password.
# username = "ksql"
# password = "secret"
# A PEM bundle of CAs to trust for https, and an optional client certificate and key (PEM).
# ca_file = "/etc/ksql-lake/ca.pem"
# client_cert = "/etc/ksql-lake/client.pem"
# client_key = "/etc/ksql-lake/client.key"
# auto: on http://, queries over HTTP/1.1 read straight from the socket (the least CPU per row:
# ksqlDB writes one HTTP chunk per row) and everything else over HTTP/2 with prior knowledge,
# falling back to HTTP/1.1; on https://, ALPN. always: HTTP/2 only. never: HTTP/1.1 only.
http2 = "auto"
connect_timeout = "10s"
# A push query that sends no byte for this long is considered stalled and reopened (a table's
# changelog, which replays the whole table on every reopen, waits four times as long).
idle_timeout = "15m"
# Reopening a broken push query waits this long at first, doubling (with jitter) up to the max.
reconnect_backoff_initial = "100ms"
reconnect_backoff_max = "30s"

[lake]
# Where the lake lives: a path, file:///path, s3://bucket/prefix, gs://bucket/prefix, az://container/prefix.
url = "file:///var/lib/ksql-lake"
# For S3-compatible stores (MinIO, Ceph...). Credentials also come from the AWS_* variables.
# endpoint = "http://minio:9000"
# region = "us-east-1"
# allow_http = false
# virtual_hosted_style = false
# access_key_id = "..."
# secret_access_key = "..."
# session_token = "..."
# One request to the store may take this long; failed writes are retried with the rows kept.
request_timeout = "30s"
# One process writes a feed at a time: it holds a lease in the lake (renewed every third of
# this), and a second process on the same feed waits. After a crash, the next process waits
# at most this long before it writes.
lease = "30s"

[http]
# /metrics (Prometheus), /healthz and /readyz.
listen = "0.0.0.0:9464"

[memory]
# One budget for everything buffered, across all feeds and partitions. Above it the largest
# buffers are flushed first; if writes cannot keep up, reading from ksqlDB pauses.
budget = "512MiB"

[shutdown]
# SIGTERM flushes every buffer and commits within this time (below Kubernetes' 30 s default).
grace_period = "25s"

# Settings for every feed; each [[feeds]] entry may override any of them.
[defaults]
# daily: year=/month=/day=; hourly: year=/month=/day=/hour=
partitioning = "daily"
# ROWTIME, a TIMESTAMP or epoch-milliseconds BIGINT column, or "processing-time".
timestamp_column = "ROWTIME"
# The time zone partitions are cut in (IANA name).
timezone = "UTC"
# zstd (compression_level 1-22), snappy, lz4, gzip (compression_level 0-9), none.
compression = "zstd"
compression_level = 3
row_group_rows = 1048576
# Rows decoded into one Arrow batch before routing to partitions.
batch_rows = 8192
# A partition's buffer is written as one Parquet file when any of these is reached:
flush_max_rows = 5000000
flush_max_bytes = "128MiB"
flush_max_age = "5m"
# An hour or day is closed (and flushed) this long after it ends.
allowed_lateness = "10m"
# exactly-once (needs ksqlDB 0.23.1+), at-least-once, latest, continuation-token.
delivery = "exactly-once"
# A row or line that cannot be decoded: dead_letter (kept under <lake>/dead_letter/<feed>/,
# exactly once), skip (counted and logged), or fail (the feed stops).
error_policy = "dead_letter"
# More rejected rows than this within a minute stop the feed.
max_rejected_per_minute = 1000
# A longer line is rejected without being held whole (its first max_line_bytes are kept).
max_line_bytes = "16MiB"
# A row whose event time is null or outside years 0-9999: arrival-time (partitioned by the time
# it was received) or fixed-partition (year=1970/month=01/day=01, to find them in one place).
# Either way it is counted in ksql_lake_null_event_time_rows_total and logged once a minute.
invalid_event_time = "arrival-time"
# Table feeds write complete snapshots as versions: tables/<feed>/version=vN/. A snapshot is
# taken this often (and by `ksql-lake export --table`):
snapshot_interval = "1h"
# auto (a pull query, or the changelog if ksqlDB refuses it), pull (SELECT * FROM T;) or
# changelog (the push query from the earliest offset, materialized by key within the memory
# budget; deletes remove their keys).
snapshot_method = "auto"
# Complete versions kept; older ones are deleted after a new one is committed.
retention_versions = 7
# Table feeds: also keep every change of the table, upserts and deletes, exactly once as the
# stream feed <feed>.changelog under tables/<feed>/changelog/ (columns op and op_order added).
changelog = false

# One entry per ksqlDB stream or table to ingest.
# [[feeds]]
# name = "transaction_stream"
# kind = "stream"
# source = "TRANSACTION_STREAM"
# partitioning = "daily"
"#;
