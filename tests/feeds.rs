//! Feeds kept in the lake and picked up by a running service, `export` passes, and the
//! operator report, on a local lake and on S3 (moto): rows are counted against what was
//! produced, and the report's figures against the files.

mod pipeline_support;
mod support;

use std::time::Duration;

use ksql_lake::config::raw::{RawFeed, RawFeedSettings};
use ksql_lake::feeds::{FeedRegistry, FeedState};
use ksql_lake::lake::{FeedKind, Lake};
use ksql_lake::pipeline::export::{self, Selection};
use ksql_lake::pipeline::RunOptions;
use object_store::ObjectStoreExt;
use pipeline_support::*;
use tokio_util::sync::CancellationToken;

const TOTAL: i64 = 3_000;

fn stream_feed(name: &str) -> RawFeed {
    RawFeed {
        name: name.into(),
        kind: "stream".into(),
        source: SOURCE.into(),
        enabled: Some(true),
        query: None,
        settings: RawFeedSettings { flush_max_age: Some("1s".into()), ..RawFeedSettings::default() },
    }
}

fn local(dir: &std::path::Path) -> Lake {
    ksql_lake::lake::open_lake(dir.to_str().unwrap(), &Default::default()).unwrap()
}

/// A config whose only feeds are those of the lake.
fn lake_only_config(ksqldb: &str, lake_url: &str, extra_lake: &str) -> ksql_lake::config::Config {
    let text = format!("[ksqldb]\nurl = \"{ksqldb}\"\n[lake]\nurl = \"{lake_url}\"\n{extra_lake}\n");
    ksql_lake::config::Config::from_toml(&text, "test", Vec::new()).unwrap()
}

async fn objects(lake: &Lake, feed: &str) -> Vec<(String, bytes::Bytes)> {
    feed_objects(lake.store(), &lake.feed_dir(FeedKind::Stream, feed).unwrap()).await
}

/// A feed added to a running service is ingested within seconds; disabled, it stops after
/// committing what it buffered and reads nothing more; enabled again, it resumes exactly
/// once; archived, it stops and keeps its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_added_disabled_enabled_and_archived_while_the_service_runs() {
    let (sim, handle) = simulator_with_rows(0).await;
    produce(&sim, 0..1_000, TOTAL);
    let dir = tempfile::tempdir().unwrap();
    let lake = local(dir.path());
    let registry = FeedRegistry::new(lake.clone());
    let config = lake_only_config(&handle.url(), dir.path().to_str().unwrap(), "");
    let options = RunOptions { reload_interval: Duration::from_millis(200), ..fast_options() };
    let running = start(config, options);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(running.written(), 0, "no feed yet");

    registry.add(&stream_feed("everything"), &RawFeedSettings::default()).await.unwrap();
    running.wait_until("the added feed's rows", Duration::from_secs(30), |r| r.written() == 1_000).await;

    produce(&sim, 1_000..1_500, TOTAL);
    running.wait_until("the next rows received", Duration::from_secs(30), |r| r.received() == 1_500).await;
    assert!(registry.set_enabled("everything", false).await.unwrap());
    running.wait_until("the disabled feed committed", Duration::from_secs(30), |r| r.written() == 1_500).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    produce(&sim, 1_500..2_000, TOTAL);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(running.received(), 1_500, "a disabled feed reads nothing");

    assert!(registry.set_enabled("everything", true).await.unwrap());
    running.wait_until("the enabled feed caught up", Duration::from_secs(30), |r| r.written() == 2_000).await;

    registry.archive("everything").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    produce(&sim, 2_000..TOTAL, TOTAL);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(running.written(), 2_000, "an archived feed reads nothing");
    let (listed, problems) = registry.list().await.unwrap();
    assert!(problems.is_empty());
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].state, listed[0].raw.enabled), (FeedState::Archived, Some(false)));
    let report = ksql_lake::report::build(&lake, None).await.unwrap();
    assert_eq!((report.feeds[0].state, report.feeds[0].total_records), ("archived", 2_000));

    registry.restore("everything").await.unwrap();
    assert!(registry.set_enabled("everything", true).await.unwrap());
    running.wait_until("the restored feed caught up", Duration::from_secs(30), |r| r.written() == TOTAL as u64).await;
    running.shutdown().await;
    verify_feed(&objects(&lake, "everything").await, TOTAL, false);
    handle.shutdown().await;
}

/// A feed in the lake with the name of a feed of the config file is not run (the config's
/// runs alone, each row once), and a feed that does not validate is reported, not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lake_feed_named_like_a_config_feed_is_not_run() {
    let (sim, handle) = simulator_with_rows(0).await;
    produce(&sim, 0..1_000, 1_000);
    let dir = tempfile::tempdir().unwrap();
    let lake = local(dir.path());
    let registry = FeedRegistry::new(lake.clone());
    registry.add(&stream_feed("everything"), &RawFeedSettings::default()).await.unwrap();
    let config = config(&handle.url(), dir.path().to_str().unwrap(), "daily", "", "flush_max_age = \"1s\"");
    let options = RunOptions { reload_interval: Duration::from_millis(200), ..fast_options() };
    let running = start(config, options);
    running.wait_until("the config feed's rows", Duration::from_secs(30), |r| r.written() == 1_000).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.shutdown().await;
    verify_feed(&objects(&lake, "everything").await, 1_000, false);
    handle.shutdown().await;
}

#[tokio::test]
async fn unsafe_or_invalid_feeds_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let lake = local(dir.path());
    let registry = FeedRegistry::new(lake.clone());
    let long = "x".repeat(129);
    for name in ["../etc", "a/b", ".hidden", "_x", "", "a..b", "naïve", long.as_str(), "a b"] {
        let error = registry.add(&stream_feed(name), &RawFeedSettings::default()).await.unwrap_err();
        assert!(error.to_string().contains("is invalid"), "{name}: {error}");
    }
    let mut bad_kind = stream_feed("ok");
    bad_kind.kind = "view".into();
    assert!(registry
        .add(&bad_kind, &RawFeedSettings::default())
        .await
        .unwrap_err()
        .to_string()
        .contains("stream, table"));
    let mut bad_source = stream_feed("ok");
    bad_source.source = "X; DROP STREAM Y".into();
    assert!(registry.add(&bad_source, &RawFeedSettings::default()).await.is_err());
    let mut bad_flush = stream_feed("ok");
    bad_flush.settings.flush_max_age = Some("0s".into());
    assert!(registry.add(&bad_flush, &RawFeedSettings::default()).await.is_err());
    assert!(registry.list().await.unwrap().0.is_empty());
    registry.add(&stream_feed("ok"), &RawFeedSettings::default()).await.unwrap();
    let again = registry.add(&stream_feed("ok"), &RawFeedSettings::default()).await.unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
    assert!(registry.set_enabled("nope", false).await.is_err());
    assert!(registry.restore("ok").await.unwrap_err().to_string().contains("it is active"));
    // a file that is not a feed is named, and the others still list
    let bad = object_store::path::Path::from("feeds/active/broken.json");
    lake.store().put(&bad, bytes::Bytes::from_static(b"{\"name\": \"broken\", \"kind\": ").into()).await.unwrap();
    let (feeds, problems) = registry.list().await.unwrap();
    assert_eq!(feeds.len(), 1);
    assert_eq!(problems.len(), 1);
    assert!(problems[0].0.contains("broken.json"), "{problems:?}");
    let (enabled, invalid) = registry.enabled_feeds(&RawFeedSettings::default()).await.unwrap();
    assert!(enabled.contains_key("ok") && invalid.len() == 1, "{invalid:?}");
}

/// `export --stream` twice in a row: each pass writes what arrived since, every row once.
async fn export_twice(lake_url: &str, extra_lake: &str, lake: Lake) {
    let (sim, handle) = simulator_with_rows(0).await;
    produce(&sim, 0..2_000, TOTAL);
    let text = format!(
        "[ksqldb]\nurl = \"{}\"\n[lake]\nurl = \"{lake_url}\"\n{extra_lake}\n[[feeds]]\nname = \"everything\"\nkind = \"stream\"\nsource = \"{SOURCE}\"\n",
        handle.url()
    );
    let config = ksql_lake::config::Config::from_toml(&text, "test", Vec::new()).unwrap();
    // a feed kept in the lake is not export's to run
    FeedRegistry::new(lake.clone()).add(&stream_feed("other"), &RawFeedSettings::default()).await.unwrap();
    let selection = Selection::Stream("everything".into());
    let first = tokio::time::timeout(
        Duration::from_secs(60),
        export::export(&config, &selection, 2, Duration::from_secs(1), CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(first[0].rows, 2_000);
    assert!(first[0].files >= 1);
    produce(&sim, 2_000..TOTAL, TOTAL);
    let second = tokio::time::timeout(
        Duration::from_secs(60),
        export::export(&config, &selection, 2, Duration::from_secs(1), CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(second[0].rows, (TOTAL - 2_000) as u64, "only the new rows");
    let third = export::export(&config, &selection, 2, Duration::from_secs(1), CancellationToken::new()).await.unwrap();
    assert_eq!(third[0].rows, 0, "nothing new, nothing written");
    verify_feed(&objects(&lake, "everything").await, TOTAL, false);
    assert!(objects(&lake, "other").await.is_empty(), "export ran only the feed it was given");
    let summary = export::summary_table(&second);
    assert!(summary.contains("everything") && summary.contains(&(TOTAL - 2_000).to_string()), "{summary}");
    // the report's figures are what the files hold
    let report = ksql_lake::report::build(&lake, Some("everything")).await.unwrap();
    let files = objects(&lake, "everything").await;
    let parquet: Vec<_> = files.iter().filter(|(path, _)| path.ends_with(".parquet")).collect();
    let feed = &report.feeds[0];
    assert_eq!(feed.total_records, TOTAL as u64);
    assert_eq!(feed.files, parquet.len() as u64);
    assert_eq!(feed.total_bytes, parquet.iter().map(|(_, bytes)| bytes.len() as u64).sum::<u64>());
    let partitions: std::collections::BTreeSet<&str> =
        parquet.iter().map(|(path, _)| path.rsplit_once('/').unwrap().0).collect();
    assert_eq!(feed.partitions, partitions.len() as u64);
    assert_eq!(report.totals.total_records, TOTAL as u64);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_stream_twice_writes_each_row_once_on_a_local_lake() {
    let dir = tempfile::tempdir().unwrap();
    export_twice(dir.path().to_str().unwrap(), "", local(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_stream_twice_writes_each_row_once_on_s3() {
    let mut moto = support::Moto::start("exports").await;
    let extra = format!(
        "endpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"",
        moto.endpoint
    );
    let lake = ksql_lake::lake::open_lake("s3://exports/lake", &support::s3_options(&moto.endpoint)).unwrap();
    export_twice("s3://exports/lake", &extra, lake).await;
    moto.stop().await;
}

/// The report in its three formats: the JSON shape documented in docs/REPORT.md, CSV with a
/// header and a total line, and the console table.
#[tokio::test]
async fn the_report_renders_its_documented_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let lake = local(dir.path());
    let mut metadata = ksql_lake::lake::FeedMetadata::new("orders", FeedKind::Stream);
    metadata.total_records = 7;
    metadata.total_bytes = 700;
    let path = lake.metadata_path(FeedKind::Stream, "orders").unwrap();
    lake.store().put(&path, metadata.to_json().unwrap().into()).await.unwrap();
    let report = ksql_lake::report::build(&lake, None).await.unwrap();
    let json = serde_json::to_value(&report).unwrap();
    for key in ["format_version", "generated_at", "lake", "feeds", "totals"] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    for key in [
        "feed",
        "kind",
        "state",
        "total_records",
        "total_bytes",
        "files",
        "partitions",
        "last_export",
        "last_export_age_seconds",
        "latest_version",
        "versions_kept",
        "small_file_ratio",
        "late_rows",
        "rejected_rows",
    ] {
        assert!(json["feeds"][0].get(key).is_some(), "{key} in {}", json["feeds"][0]);
    }
    let csv = ksql_lake::report::render_csv(&report);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[1].starts_with("orders,stream,active,7,700,"), "{csv}");
    assert!(lines[2].starts_with("TOTAL,,,7,700,"), "{csv}");
    assert!(ksql_lake::report::render_table(&report).contains("TOTAL (1 feeds)"));
    let unknown = ksql_lake::report::build(&lake, Some("nope")).await.unwrap_err();
    assert!(unknown.to_string().contains("nope"));
}

/// Two replicas of one config split its feeds by rendezvous hashing: each feed is written by
/// exactly one of them, whole and once, and a replica of a bigger cluster never takes a feed
/// from another old replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_the_feeds_and_write_each_once() {
    let (_sim, handle) = simulator_with_rows(600).await;
    let dir = tempfile::tempdir().unwrap();
    // three feeds of each replica, so both have work
    let candidates: Vec<String> = (0..64).map(|i| format!("feed_{i}")).collect();
    let of =
        |ordinal: u32| candidates.iter().filter(move |name| ksql_lake::cluster::owner_of(name, 2) == ordinal).take(3);
    let names: Vec<&str> = of(0).chain(of(1)).map(String::as_str).collect();
    let mut text = format!("[ksqldb]\nurl = \"{}\"\n[lake]\nurl = \"{}\"\n", handle.url(), dir.path().display());
    for name in &names {
        text.push_str(&format!(
            "[[feeds]]\nname = \"{name}\"\nkind = \"stream\"\nsource = \"{SOURCE}\"\nflush_max_age = \"1s\"\n"
        ));
    }
    let replica = |ordinal: u32| {
        let text = format!("{text}[cluster]\nreplicas = 2\nordinal = {ordinal}\n");
        ksql_lake::config::Config::from_toml(&text, "test", Vec::new()).unwrap()
    };
    let (first, second) = (start(replica(0), fast_options()), start(replica(1), fast_options()));
    let written = |running: &Running, feed: &str| running.metrics.rows_written.with_label_values(&[feed]).get();
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        while !names.iter().all(|feed| written(&first, feed) + written(&second, feed) == 600) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(done.is_ok(), "every feed written by one replica");
    let mine: Vec<u32> = names.iter().map(|feed| if written(&first, feed) > 0 { 0 } else { 1 }).collect();
    for (feed, owner) in names.iter().zip(&mine) {
        assert_eq!(*owner, ksql_lake::cluster::owner_of(feed, 2), "{feed}");
        assert!(written(&first, feed) == 0 || written(&second, feed) == 0, "{feed} written by both");
    }
    assert!(mine.contains(&0) && mine.contains(&1), "both replicas have work: {mine:?}");
    first.shutdown().await;
    second.shutdown().await;
    let lake = local(dir.path());
    for feed in &names {
        verify_feed(&objects(&lake, feed).await, 600, false);
    }
    handle.shutdown().await;
    let bad = ksql_lake::config::Config::from_toml(&format!("{text}[cluster]\nreplicas = 2\n"), "test", Vec::new());
    assert!(bad.unwrap_err().to_string().contains("cluster.ordinal"));
}

/// A feed that loses its lease (another process took it: here a lease rewritten under it)
/// stops at once without committing what it buffered, reports it, and the service exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_that_loses_its_lease_stops_without_committing() {
    let (_sim, handle) = simulator_with_rows(500).await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        config(&handle.url(), dir.path().to_str().unwrap(), "daily", "lease = \"1s\"", "flush_max_age = \"60s\"");
    let running = start(config, fast_options());
    running.wait_until("the rows buffered", Duration::from_secs(30), |r| r.received() == 500).await;
    let lake = local(dir.path());
    let lease = lake.feed_path(FeedKind::Stream, "everything", "_writer.lease").unwrap();
    let usurper = tokio::spawn({
        let lake = lake.clone();
        async move {
            for i in 0..100u64 {
                let body = serde_json::json!({"owner": "another-process", "expires_at_ms": i64::MAX - i as i64});
                lake.store().put(&lease, serde_json::to_vec(&body).unwrap().into()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let ended = tokio::time::timeout(Duration::from_secs(30), running.task).await.expect("the service stops").unwrap();
    usurper.abort();
    let error = format!("{:#}", ended.unwrap_err());
    assert!(error.contains("lost its lease"), "{error}");
    assert_eq!(running.metrics.rows_written.with_label_values(&["everything"]).get(), 0, "nothing committed");
    let files = objects(&lake, "everything").await;
    assert!(
        files.iter().all(|(path, _)| !path.ends_with(".parquet")),
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    handle.shutdown().await;
}
