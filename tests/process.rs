//! The `ksql-lake` binary as operators run it: `run` with a config file, stopped by SIGTERM;
//! `check`; `config default`; and clear errors for bad configs.

mod pipeline_support;
mod support;

use std::sync::Arc;
use std::time::Duration;

use object_store::local::LocalFileSystem;
use object_store::path::Path;
use pipeline_support::*;
use support::spawn_service;
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_ksql-lake");

fn write_config(dir: &std::path::Path, ksqldb_url: &str, port: u16, feed_extra: &str) -> std::path::PathBuf {
    let path = dir.join("ksql-lake.toml");
    let text = format!(
        "[ksqldb]\nurl = \"{ksqldb_url}\"\n[lake]\nurl = \"file://{}/lake\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
         [[feeds]]\nname = \"everything\"\nkind = \"stream\"\nsource = \"{SOURCE}\"\n{feed_extra}\n",
        dir.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The value of a metric line in a Prometheus exposition, if present.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|line| line.starts_with(prefix)).and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_every_buffer_commits_and_exits_zero() {
    let rows = 4_000;
    let dir = tempfile::tempdir().unwrap();
    let (simulator, server) = simulator_with_rows(rows).await;
    // Nothing would flush for an hour and no day closes: every row reaches the lake through the
    // SIGTERM flush.
    let config = write_config(dir.path(), &server.url(), 0, "flush_max_age = \"1h\"\nallowed_lateness = \"3650d\"");
    let (mut child, address) = spawn_service(BINARY, &["run".as_ref(), "--config".as_ref(), config.as_os_str()]).await;
    let port = address.port();

    let http = reqwest::Client::new();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let received = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(response) = http.get(&metrics_url).send().await {
                let text = response.text().await.unwrap_or_default();
                if metric(&text, "ksql_lake_rows_received_total{feed=\"everything\"}") == Some(rows as f64) {
                    return text;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the process received every row within 60 s");
    // Every feed's series exist from the start (at 0), so rate() and alerts see them at once.
    assert_eq!(
        metric(&received, "ksql_lake_rows_written_total{feed=\"everything\"}"),
        Some(0.0),
        "nothing committed yet"
    );
    assert_eq!(metric(&received, "ksql_lake_push_query_up{feed=\"everything\"}"), Some(1.0));
    let ready = http.get(format!("http://127.0.0.1:{port}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready while streaming");
    let healthy = http.get(format!("http://127.0.0.1:{port}/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within the 25 s grace period")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(simulator.running_push_queries(), 0, "the push query was closed");

    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path().join("lake")).unwrap());
    let objects = feed_objects(&store, &Path::from("streams/everything")).await;
    verify_feed(&objects, rows, false);
    let metadata: serde_json::Value =
        serde_json::from_slice(&objects.iter().find(|(name, _)| name == "_metadata.json").unwrap().1).unwrap();
    let reasons: Vec<&str> = metadata["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|partition| partition["files"].as_array().unwrap())
        .map(|file| file["reason"].as_str().unwrap())
        .collect();
    assert!(!reasons.is_empty() && reasons.iter().all(|reason| *reason == "shutdown"), "{reasons:?}");

    // `metadata rebuild` recreates the manifest from the files alone and keeps the old one.
    let manifest = dir.path().join("lake/streams/everything/_metadata.json");
    std::fs::write(&manifest, b"{ not json").unwrap();
    let output = Command::new(BINARY)
        .args(["metadata", "rebuild", "--feed", "everything", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("{rows} rows")));
    let rebuilt: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(rebuilt["total_records"], metadata["total_records"]);
    assert_eq!(rebuilt["total_bytes"], metadata["total_bytes"]);
    assert_eq!(rebuilt["committed_positions"], metadata["committed_positions"], "same committed set");
    assert_eq!(std::fs::read(manifest.with_extension("json.bak")).unwrap(), b"{ not json");
    server.shutdown().await;
}

#[tokio::test]
async fn config_default_prints_a_config_that_check_accepts_then_probes() {
    let output = Command::new(BINARY).args(["config", "default"]).output().await.unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("[ksqldb]") && text.contains("flush_max_bytes = \"128MiB\""));

    // `check` against a live simulator and a local lake: every line passes.
    let dir = tempfile::tempdir().unwrap();
    let (_simulator, server) = simulator_with_rows(10).await;
    let config = write_config(dir.path(), &server.url(), 0, "");
    let output = Command::new(BINARY).args(["check", "--config"]).arg(&config).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("✔ ksqlDB") && stdout.contains("version 0.29.0"), "{stdout}");
    assert!(stdout.contains("✔ lake") && stdout.contains("writable and readable"), "{stdout}");
    assert!(!stdout.contains('✖'), "{stdout}");
    server.shutdown().await;

    // With ksqlDB gone, `check` says so and exits non-zero.
    let output = Command::new(BINARY).args(["check", "--config"]).arg(&config).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(stdout.contains("✖ ksqlDB"), "{stdout}");
}

#[tokio::test]
async fn bad_configs_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[ksqldb]\nurl = \"http://127.0.0.1:1\"\n[lake]\nurl = \"/tmp/x\"\n[[feeds]]\nname = \"a\"\nkind = \"stream\"\n\
         source = \"A\"\npartitioning = \"weekly\"\n",
    )
    .unwrap();
    let output = Command::new(BINARY).args(["run", "--config"]).arg(&path).output().await.unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("feeds[0].partitioning") && stderr.contains("allowed: daily, hourly"), "{stderr}");

    let output = Command::new(BINARY).args(["run", "--config", "/nonexistent.toml"]).output().await.unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read config file /nonexistent.toml"));
}
