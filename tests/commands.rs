//! The subcommands as a user runs them: `demo`, `export`, `feeds` and `report`, on a local lake
//! and on S3 (moto), with their exit codes: 0 success, 1 when ksqlDB or the lake cannot be
//! reached, 2 for bad arguments.

mod pipeline_support;
mod support;

use std::time::Duration;

use pipeline_support::*;
use support::BINARY;
use tokio::process::Command;

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn ksql_lake(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BINARY);
    command.args(args).env_remove("RUST_LOG").env_remove("KSQL_LAKE_LAKE__URL").env_remove("KSQL_LAKE_KSQLDB__URL");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the command finishes within 120 s")
        .unwrap();
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The README's first command: a few live lines per feed and a summary, not a log line per
/// file, and a lake DuckDB and pyarrow read back with the table's latest version in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_shows_progress_and_a_summary_and_writes_a_readable_lake() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let out = ksql_lake(&["demo", "--duration", "12s", "--lake", lake.to_str().unwrap()], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.lines().count() < 20, "a few lines, not a log flood:\n{}", out.stderr);
    assert!(out.stderr.contains("after 5 s:") && out.stderr.contains("transaction_stream"), "{}", out.stderr);
    assert!(!out.stderr.contains("committed data file"), "the per-file log is behind -v:\n{}", out.stderr);
    assert!(out.stdout.contains("streams/transaction_stream:"), "{}", out.stdout);
    assert!(
        out.stdout.contains("tables/user_transaction_summary:") && out.stdout.contains("version=v"),
        "{}",
        out.stdout
    );
    let stream = lake.join("streams/transaction_stream");
    let read = support::read_with_python(&stream, &[], None).await;
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stream.join("_metadata.json")).unwrap()).unwrap();
    assert_eq!(read["duckdb"]["count"], metadata["total_records"], "{read}");
    assert_eq!(read["pyarrow"]["count"], metadata["total_records"], "{read}");
    // the file list as docs/METADATA.md tells readers to follow it, in Python and in DuckDB SQL
    for reader in ["python", "duckdb"] {
        assert_eq!(read["manifest"][reader]["files"], metadata["total_files"], "{reader}: {read}");
        assert_eq!(read["manifest"][reader]["rows"], metadata["total_records"], "{reader}: {read}");
    }
    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lake.join("tables/user_transaction_summary/_metadata.json")).unwrap())
            .unwrap();
    let latest = table["latest_version"].as_u64().unwrap();
    let version = lake.join(format!("tables/user_transaction_summary/version=v{latest}"));
    let read = support::read_with_python(&version, &[], None).await;
    assert_eq!(read["duckdb"]["count"], table["total_records"], "{read}");
    assert_eq!(read["pyarrow"]["count"], table["total_records"], "{read}");
    let verbose = ksql_lake(&["demo", "-v", "--duration", "6s", "--lake", lake.to_str().unwrap()], &[]).await;
    assert_eq!(verbose.code, 0);
    assert!(verbose.stderr.contains("committed data file"), "-v shows the full log");
    assert!(verbose.stderr.contains("replacing the earlier demo lake"), "{}", verbose.stderr);
    // a folder the demo did not write is left alone
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "mine").unwrap();
    let refused = ksql_lake(&["demo", "--duration", "1s", "--lake", other.to_str().unwrap()], &[]).await;
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("not empty"), "{}", refused.stderr);
    assert_eq!(std::fs::read_to_string(other.join("keep.txt")).unwrap(), "mine");
}

fn write_config(dir: &std::path::Path, ksqldb: &str, lake: &str, extra_lake: &str) -> std::path::PathBuf {
    let path = dir.join("ksql-lake.toml");
    let text = format!(
        "[ksqldb]\nurl = \"{ksqldb}\"\n[lake]\nurl = \"{lake}\"\n{extra_lake}\n\
         [[feeds]]\nname = \"everything\"\nkind = \"stream\"\nsource = \"{SOURCE}\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_exits_0_1_or_2_with_a_message_a_person_can_act_on() {
    let (_sim, handle) = simulator_with_rows(500).await;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let config = write_config(dir.path(), &handle.url(), lake.to_str().unwrap(), "");
    let config = config.to_str().unwrap();
    let done = ksql_lake(&["export", "--config", config, "--stream", "everything", "--until-idle", "1s"], &[]).await;
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert!(done.stdout.contains("everything") && done.stdout.contains("exported 500 rows"), "{}", done.stdout);
    let again = ksql_lake(&["export", "--config", config, "--all", "--until-idle", "1s"], &[]).await;
    assert!(again.stdout.contains("exported 0 rows"), "each row once: {}", again.stdout);
    verify_feed(&feed_objects(&local(&lake), &"streams/everything".into()).await, 500, false);

    for (args, needle) in [
        (vec!["export", "--config", config], "required"),
        (vec!["export", "--config", config, "--stream", "a", "--table", "b"], "cannot be used with"),
        (vec!["export", "--config", config, "--stream", "nope"], "no feed named `nope`"),
        (vec!["export", "--config", config, "--table", "everything"], "is a stream: use --stream everything"),
        (vec!["export", "--config", config, "--all", "--until-idle", "soon"], "--until-idle"),
    ] {
        let out = ksql_lake(&args, &[]).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
    // ksqlDB that does not answer: 1, naming the server
    let unreachable = write_config(dir.path(), "http://127.0.0.1:9", lake.to_str().unwrap(), "");
    let out = ksql_lake(&["export", "--config", unreachable.to_str().unwrap(), "--all"], &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("cannot reach ksqlDB at http://127.0.0.1:9"), "{}", out.stderr);
    handle.shutdown().await;
}

fn local(dir: &std::path::Path) -> std::sync::Arc<dyn object_store::ObjectStore> {
    std::sync::Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap())
}

/// `feeds` and `report` need only `--lake` (here an S3 bucket, credentials from AWS_*): a feed
/// added, listed, disabled, archived and restored, names checked, and the report of the lake
/// an export filled, in each format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_and_report_on_s3_with_only_the_global_flags() {
    let mut moto = support::Moto::start("cli").await;
    let env = [
        ("AWS_ENDPOINT", moto.endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ];
    let (_sim, handle) = simulator_with_rows(300).await;
    let url = handle.url();
    let lake = ["--lake", "s3://cli/lake"];
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = lake.to_vec();
        all.extend_from_slice(args);
        let owned: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        async move {
            let borrowed: Vec<&str> = owned.iter().map(String::as_str).collect();
            ksql_lake(&borrowed, &env).await
        }
    };
    let added = run(&[
        "--ksqldb",
        &url,
        "feeds",
        "add",
        "--name",
        "everything",
        "--kind",
        "stream",
        "--source",
        SOURCE,
        "--check",
    ])
    .await;
    assert_eq!(added.code, 0, "{}", added.stderr);
    assert!(
        added.stdout.contains("EVERYTHING exists") && added.stdout.contains("added stream feed `everything`"),
        "{}",
        added.stdout
    );
    let missing =
        run(&["--ksqldb", &url, "feeds", "add", "--name", "ghost", "--kind", "stream", "--source", "GHOST", "--check"])
            .await;
    assert_eq!(missing.code, 1, "an unknown source is not added: {}", missing.stderr);
    assert!(missing.stderr.contains("GHOST"), "{}", missing.stderr);
    let unsafe_name = run(&["feeds", "add", "--name", "../../x", "--kind", "stream", "--source", "S"]).await;
    assert_eq!(unsafe_name.code, 2);
    assert!(unsafe_name.stderr.contains("--name"), "{}", unsafe_name.stderr);
    let listed = run(&["feeds", "list"]).await;
    assert!(listed.stdout.contains("everything") && !listed.stdout.contains("ghost"), "{}", listed.stdout);
    assert_eq!(run(&["feeds", "disable", "everything"]).await.code, 0);
    let shown = run(&["feeds", "show", "everything"]).await;
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(shown["feed"]["enabled"], false);
    assert_eq!(run(&["feeds", "archive", "everything"]).await.code, 0);
    assert_eq!(run(&["feeds", "enable", "everything"]).await.code, 2, "an archived feed is restored first");
    assert_eq!(run(&["feeds", "restore", "everything"]).await.code, 0);

    // fill the lake with an export, then report on it
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "endpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"",
        moto.endpoint
    );
    let config = write_config(dir.path(), &url, "s3://cli/lake", &extra);
    let exported =
        ksql_lake(&["export", "--config", config.to_str().unwrap(), "--all", "--until-idle", "1s"], &[]).await;
    assert_eq!(exported.code, 0, "{}", exported.stderr);
    let json = run(&["report", "--format", "json"]).await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["feeds"][0]["feed"], "everything");
    assert_eq!(report["feeds"][0]["total_records"], 300);
    assert_eq!(report["totals"]["total_records"], 300);
    let csv = run(&["report", "--format", "csv", "--feed", "everything"]).await;
    assert!(
        csv.stdout.lines().nth(1).is_some_and(|line| line.starts_with("everything,stream,active,300,")),
        "{}",
        csv.stdout
    );
    let table = run(&["report"]).await;
    assert!(table.stdout.contains("TOTAL (1 feeds)"), "{}", table.stdout);
    assert_eq!(run(&["report", "--feed", "nope"]).await.code, 2);
    let no_lake = ksql_lake(&["report"], &[]).await;
    assert_eq!(no_lake.code, 2);
    assert!(no_lake.stderr.contains("--lake"), "{}", no_lake.stderr);
    handle.shutdown().await;
    moto.stop().await;
}
