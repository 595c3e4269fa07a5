//! The `ksql-lake` binary as operators run it: `run` with a config file, stopped by SIGTERM;
//! `check`; `config default`; and clear errors for bad configs.

mod pipeline_support;
mod support;

use std::sync::Arc;
use std::time::Duration;

use object_store::local::LocalFileSystem;
use object_store::path::Path;
use pipeline_support::*;
use support::{spawn_service, BINARY};
use tokio::process::Command;

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
    let metadata = ksql_lake::lake::testing::expanded_manifest(&objects);
    assert!(metadata.get("open_writer").is_none(), "a clean stop clears the writer's mark: {metadata}");
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
    assert!(stdout.contains("✔ feed everything source EVERYTHING") && stdout.contains("ROWOFFSET"), "{stdout}");
    assert!(!stdout.contains('✖'), "{stdout}");
    assert!(!dir.path().join("lake/_ksql_lake_check").exists(), "the probe leaves nothing behind");

    // A timestamp column the source does not have, and a config without feeds, fail `check`.
    let bad = write_config(dir.path(), &server.url(), 0, "timestamp_column = \"WHEN\"");
    let output = Command::new(BINARY).args(["check", "--config"]).arg(&bad).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(stdout.contains("✖ feed everything") && stdout.contains("timestamp_column `WHEN`"), "{stdout}");
    let empty = dir.path().join("empty.toml");
    std::fs::write(
        &empty,
        format!("[ksqldb]\nurl = \"{}\"\n[lake]\nurl = \"file://{}/lake\"\n", server.url(), dir.path().display()),
    )
    .unwrap();
    let output = Command::new(BINARY).args(["check", "--config"]).arg(&empty).output().await.unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("no [[feeds]]"));
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

/// Planted secrets appear in no output: not in `config default`, `check`, `run` at trace level,
/// `/metrics`, `/readyz`, nor anywhere in the lake; nor in the base64 form an HTTP Basic
/// header would carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_secrets_appear_in_no_output_at_trace_level() {
    use base64::Engine as _;
    use futures::TryStreamExt;
    use object_store::{ObjectStore, ObjectStoreExt};
    let password = "Pw-7f3a9c-PLANTED";
    let secret_key = "S3-5e1d0b-PLANTED";
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}"));
    let planted = [password, secret_key, basic.as_str()];

    let moto = support::Moto::start("secrets").await;
    let simulator = ksql_lake::simulator::Simulator::new(ksql_lake::simulator::SimulatorConfig {
        basic_auth: Some(("admin".into(), password.into())),
        ..Default::default()
    });
    simulator.create_stream(SOURCE, ksql_lake::schema::parse_schema(SCHEMA).unwrap(), 3).unwrap();
    produce(&simulator, 0..500, 500);
    let server = simulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ksql-lake.toml");
    std::fs::write(
        &config,
        format!(
            "[ksqldb]\nurl = \"{}\"\nusername = \"admin\"\n[lake]\nurl = \"s3://secrets/lake\"\nendpoint = \"{}\"\n\
             region = \"us-east-1\"\nallow_http = true\naccess_key_id = \"AKIATEST\"\nsecret_access_key = \"{secret_key}\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[[feeds]]\nname = \"everything\"\nkind = \"stream\"\nsource = \"{SOURCE}\"\n\
             flush_max_age = \"200ms\"\n",
            server.url(),
            moto.endpoint
        ),
    )
    .unwrap();
    // The password comes from the environment, as operators are told to pass it.
    let env = [("KSQL_LAKE_KSQLDB__PASSWORD", password)];
    let mut outputs = Vec::new();
    for args in [vec!["config", "default"], vec!["--log-format", "json", "check", "--config"]] {
        let mut command = Command::new(BINARY);
        command.args(&args).env("RUST_LOG", "trace").envs(env);
        if args.contains(&"check") {
            command.arg(&config);
        }
        let output = command.output().await.unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stdout));
        outputs.push(String::from_utf8_lossy(&output.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let (mut child, address, log) = support::spawn_service_logged(
        BINARY,
        &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
        "trace",
        &env,
    )
    .await;
    let http = reqwest::Client::new();
    let metrics = format!("http://{address}/metrics");
    let written = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let text = http.get(&metrics).send().await.unwrap().text().await.unwrap();
            if metric(&text, "ksql_lake_rows_written_total{feed=\"everything\"}") == Some(500.0) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("every row written");
    outputs.push(written);
    outputs.push(http.get(format!("http://{address}/readyz")).send().await.unwrap().text().await.unwrap());
    outputs.push(http.get(format!("http://{address}/healthz")).send().await.unwrap().text().await.unwrap());
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = log.lock().unwrap().clone();
    assert!(log.contains("TRACE"), "the run logged at trace level");
    outputs.push(log);
    let lake = ksql_lake::lake::open_lake("s3://secrets/lake", &support::s3_options(&moto.endpoint)).unwrap();
    let listed: Vec<_> = lake.store().list(None).try_collect().await.unwrap();
    assert!(listed.len() >= 2, "data and manifest written");
    for meta in listed {
        let bytes = lake.store().get(&meta.location).await.unwrap().bytes().await.unwrap();
        outputs.push(String::from_utf8_lossy(&bytes).into_owned());
    }
    for (index, output) in outputs.iter().enumerate() {
        for secret in planted {
            assert!(!output.contains(secret), "output {index} holds a planted secret");
        }
    }
    server.shutdown().await;
}

/// A memory figure of a process from /proc/<pid>/status (`VmHWM:`, `VmRSS:`, …), in bytes.
fn proc_memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// The peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    proc_memory(pid, "VmHWM:")
}

/// A 200 MB row under a 64 MiB memory budget: it is dead-lettered truncated to max_line_bytes
/// (16 MiB) without ever being held whole, the rows around it land, and the process's peak
/// memory stays under the budget plus 64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_row_never_drives_memory_past_the_budget() {
    let simulator = ksql_lake::simulator::Simulator::new(ksql_lake::simulator::SimulatorConfig::default());
    simulator.create_stream(SOURCE, ksql_lake::schema::parse_schema("`ID` BIGINT, `NAME` STRING").unwrap(), 1).unwrap();
    let value = |id: i64| vec![ksql_lake::simulator::Value::Bigint(id), ksql_lake::simulator::Value::string("a")];
    for id in 0..10 {
        simulator.produce(SOURCE, None, BASE_MS + id, value(id)).unwrap();
    }
    let huge = format!("\"{}\"", "z".repeat(200 * 1024 * 1024));
    simulator.produce_rendered(SOURCE, [(None, BASE_MS + 10, ["10", huge.as_str()].as_slice())]).unwrap();
    drop(huge);
    for id in 11..20 {
        simulator.produce(SOURCE, None, BASE_MS + id, value(id)).unwrap();
    }
    let server = simulator.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ksql-lake.toml");
    std::fs::write(
        &config,
        format!(
            "[ksqldb]\nurl = \"{}\"\n[lake]\nurl = \"file://{}/lake\"\n[memory]\nbudget = \"64MiB\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[[feeds]]\nname = \"everything\"\nkind = \"stream\"\n\
             source = \"{SOURCE}\"\nflush_max_age = \"200ms\"\n",
            server.url(),
            dir.path().display()
        ),
    )
    .unwrap();
    let (mut child, address) = spawn_service(BINARY, &["run".as_ref(), "--config".as_ref(), config.as_os_str()]).await;
    let http = reqwest::Client::new();
    let done = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let text = http.get(format!("http://{address}/metrics")).send().await.unwrap().text().await.unwrap();
            if metric(&text, "ksql_lake_rows_written_total{feed=\"everything\"}") == Some(19.0)
                && metric(&text, "ksql_lake_dead_letter_rows_total{feed=\"everything\"}") == Some(1.0)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let peak = peak_rss(child.id().unwrap());
    assert!(done.is_ok(), "the rows around the long one and the long one itself were committed");
    println!("peak RSS with a 200 MB row under a 64 MiB budget: {} MiB", peak >> 20);
    assert!(peak < (64 + 64) << 20, "peak RSS {} MiB", peak >> 20);
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    let dead_letter: Vec<_> = walk(&dir.path().join("lake/dead_letter/everything"));
    assert_eq!(dead_letter.len(), 1);
    let line: serde_json::Value = serde_json::from_slice(&std::fs::read(&dead_letter[0]).unwrap()).unwrap();
    assert_eq!(line["error_type"], "line_too_long");
    assert_eq!(line["raw"].as_str().unwrap().len(), 16 << 20);
    assert!(line["length"].as_u64().unwrap() > 200 << 20);
    server.shutdown().await;
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The resident memory of a process now, in bytes.
fn rss(pid: u32) -> u64 {
    proc_memory(pid, "VmRSS:")
}

/// `simulator --demo-data`, as a user starts it (default rate and retention), keeps each source
/// to its retention, so over a minute its memory levels off instead of growing by 100 MB a
/// minute as it did with no bound (about 49 MiB per 30 s at the demo rate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_simulator_stays_flat_under_its_retention() {
    const STATED_RSS_MIB: u64 = 150;
    let mut child = Command::new(BINARY)
        .args(["simulator", "--listen", "127.0.0.1:0", "--demo-data"])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut samples = Vec::new();
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        samples.push(rss(pid) >> 20);
    }
    println!("simulator RSS every 5 s over 60 s, MiB: {samples:?}");
    // the retention (50,000 rows per source) is full after about 10 s of live rows
    let (half, end) = (samples[5], samples[11]);
    assert!(end < half + 25, "grew from {half} MiB at 30 s to {end} MiB at 60 s: {samples:?}");
    let peak = samples.iter().max().copied().unwrap_or_default();
    assert!(peak < STATED_RSS_MIB, "{peak} MiB, above the stated {STATED_RSS_MIB} MiB: {samples:?}");
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
