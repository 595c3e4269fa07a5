//! The metrics as operators use them: a real Prometheus (Debian's, installed by the test
//! command) scrapes a running ksql-lake during an ingest; `promtool check metrics` accepts the
//! exposition; the alert rules pass `promtool check rules` and their unit tests, and every rule
//! parses in that Prometheus and every metric it reads has data there. `/feeds` shows the
//! feed's figures.

mod pipeline_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pipeline_support::*;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

fn rules() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/ksql-lake-rules.yml")
}

async fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    assert!(Path::new(PROMTOOL).is_file(), "{PROMTOOL} missing: run scripts/test.sh, which installs it");
    let mut child = Command::new(PROMTOOL)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.unwrap().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The `expr` of every rule in the rules file (single-line or folded `>-` blocks).
fn rule_expressions(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut expressions = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else { continue };
        let rest = rest.trim();
        if rest == ">-" || rest == ">" {
            let indent = line.len() - line.trim_start().len();
            let block: Vec<&str> = lines[index + 1..]
                .iter()
                .take_while(|next| next.trim().is_empty() || next.len() - next.trim_start().len() > indent)
                .map(|next| next.trim())
                .collect();
            expressions.push(block.join(" "));
        } else {
            expressions.push(rest.to_string());
        }
    }
    expressions
}

fn metric_names(expression: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expression;
    while let Some(start) = rest.find("ksql_lake_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let (ok, text) = promtool(&["check", "rules", rules().to_str().unwrap()], None).await;
    assert!(ok, "{text}");
    let tests = rules().with_file_name("ksql-lake-rules.test.yml");
    let (ok, text) = promtool(&["test", "rules", tests.to_str().unwrap()], None).await;
    assert!(ok, "{text}");
    assert_eq!(rule_expressions(&std::fs::read_to_string(rules()).unwrap()).len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_ksql_lake_and_every_rule_reads_data() {
    let (sim, handle) = simulator_with_rows(0).await;
    produce(&sim, 0..1_000, 2_000);
    use ksql_lake::schema::{Column, KsqlType};
    sim.create_table(
        "USERS",
        vec![Column::new("ID", KsqlType::String)],
        vec![Column::new("SCORE", KsqlType::Integer)],
        1,
    )
    .unwrap();
    for id in 0..10 {
        let row = vec![ksql_lake::simulator::Value::string(format!("u{id}")), ksql_lake::simulator::Value::Integer(id)];
        sim.produce("USERS", None, i64::from(id), row).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        &handle.url(),
        dir.path().join("lake").to_str().unwrap(),
        "daily",
        "[http]\nlisten = \"127.0.0.1:0\"",
        "flush_max_age = \"1s\"\n[[feeds]]\nname = \"users\"\nkind = \"table\"\nsource = \"USERS\"\nsnapshot_interval = \"2s\"",
    );
    let options = ksql_lake::pipeline::RunOptions { serve_http: true, ..fast_options() };
    let running = start(config, options);
    running.wait_until("the first rows", Duration::from_secs(30), |r| r.written() == 1_000).await;
    let address = running.health.http_address().expect("the endpoint is served");
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let url = format!("http://{address}{path}");
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };

    let exposition = get("/metrics").await;
    let (ok, text) = promtool(&["check", "metrics"], Some(&exposition)).await;
    assert!(ok, "promtool check metrics: {text}");
    // series known in advance exist at 0 from the start, so increase() and absence alerts work
    for line in [
        "ksql_lake_push_query_reconnects_total{feed=\"everything\",reason=\"disconnect\"} 0",
        "ksql_lake_rows_rejected_total{error_type=\"value\",feed=\"everything\"} 0",
        "ksql_lake_files_written_total{feed=\"everything\",reason=\"memory\"} 0",
    ] {
        assert!(exposition.contains(line), "{line} missing from:\n{exposition}");
    }
    assert!(exposition.contains(&format!("ksql_lake_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
    assert!(exposition.contains("ksql_lake_commit_lag_seconds_count{feed=\"everything\"}"));

    let feeds: serde_json::Value = serde_json::from_str(&get("/feeds").await).unwrap();
    let feed = &feeds["feeds"][0];
    assert_eq!(feed["feed"], "everything");
    assert_eq!(feeds["feeds"][1]["feed"], "users");
    assert_eq!(feeds["feeds"][1]["delivery"], "snapshot");
    assert_eq!((feed["kind"].as_str(), feed["delivery"].as_str()), (Some("stream"), Some("exactly-once")));
    assert_eq!(feed["rows_written"], 1_000);
    assert_eq!(feed["state"]["state"], "streaming");
    assert!(feed["last_commit"].is_string() && feed["last_row_received"].is_string(), "{feed}");
    assert!(feed["lag_seconds"].as_f64().is_some(), "{feed}");

    // the status page, as a browser shows it (headless Chromium runs its script)
    let page = get("/").await;
    assert!(
        page.contains("<title>ksql-lake</title>") && !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );
    let chromium = Path::new("/usr/bin/chromium");
    assert!(chromium.is_file(), "{} missing: run scripts/test.sh, which installs it", chromium.display());
    let profile = dir.path().join("chromium");
    let shown = tokio::time::timeout(
        Duration::from_secs(90),
        Command::new(chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000", "--dump-dom"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("http://{address}/"))
            .stderr(Stdio::null())
            .output(),
    )
    .await
    .expect("chromium finishes within 90 s")
    .unwrap();
    let dom = String::from_utf8_lossy(&shown.stdout);
    assert!(dom.contains("<tr data-feed=\"everything\">"), "the feed's row: {dom}");
    assert!(dom.contains("<td class=\"state streaming\">streaming</td>"), "its state: {dom}");
    assert!(dom.contains("2 feeds, all streaming"), "the summary: {dom}");

    // a real Prometheus scrapes it every second
    assert!(Path::new(PROMETHEUS).is_file(), "{PROMETHEUS} missing: run scripts/test.sh, which installs it");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    std::fs::copy(rules(), prom_dir.join("rules.yml")).unwrap();
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: ksql-lake\n    static_configs: [{{targets: ['{address}']}}]\n"
        ),
    )
    .unwrap();
    let mut prometheus = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", prom_dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", prom_dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let query = |expression: String| {
        let client = client.clone();
        async move {
            let url = url::Url::parse_with_params(
                &format!("http://127.0.0.1:{port}/api/v1/query"),
                &[("query", expression.as_str())],
            )
            .ok()?;
            let response = client.get(url).send().await.ok()?;
            response.json::<serde_json::Value>().await.ok()
        }
    };
    let scraped = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(answer) = query("ksql_lake_rows_written_total{feed=\"everything\"}".into()).await {
                if answer["data"]["result"][0]["value"][1] == "1000" {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(scraped.is_ok(), "Prometheus did not see the rows within 60 s");
    produce(&sim, 1_000..2_000, 2_000);
    running.wait_until("the next rows", Duration::from_secs(30), |r| r.written() == 2_000).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = std::fs::read_to_string(rules()).unwrap();
    for expression in rule_expressions(&text) {
        let answer = query(expression.clone()).await.expect("Prometheus answers");
        assert_eq!(answer["status"], "success", "{expression}: {answer}");
        for name in metric_names(&expression) {
            let answer = query(format!("count({name})")).await.expect("Prometheus answers");
            let result = &answer["data"]["result"];
            assert!(result.as_array().is_some_and(|r| !r.is_empty()), "{name} (in {expression}) has no data: {answer}");
        }
    }
    // every panel of the dashboard: parses, and has data from this ingest
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards/ksql-lake.json"))
            .unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expression = target["expr"].as_str().unwrap().replace("$feed", ".*").replace("$__rate_interval", "1m");
            let answer = query(expression.clone()).await.expect("Prometheus answers");
            assert_eq!(answer["status"], "success", "{expression}: {answer}");
            for name in metric_names(&expression) {
                let answer = query(format!("count({name})")).await.expect("Prometheus answers");
                let data = answer["data"]["result"].as_array().is_some_and(|result| !result.is_empty());
                assert!(data, "{name} (panel {}) has no data: {answer}", panel["title"]);
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} expressions");
    let _ = prometheus.kill().await;
    running.shutdown().await;
    handle.shutdown().await;
}
