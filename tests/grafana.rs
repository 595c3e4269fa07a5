//! The Grafana dashboard type-checks against `@grafana/schema` (npm, installed by the test
//! command) with tsc: a misspelt field or a wrong type in a panel fails here, not in Grafana.
//! Its PromQL is checked against a live Prometheus in tests/prometheus.rs.

mod support;

use std::path::PathBuf;
use std::time::Duration;

#[tokio::test]
async fn the_dashboard_type_checks_against_the_grafana_schema() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read_to_string(root.join("grafana/dashboards/ksql-lake.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(dashboard["uid"], "ksql-lake");
    let node = support::venv().join("node");
    let tsc = node.join("node_modules/.bin/tsc");
    assert!(
        tsc.is_file(),
        "{} missing: run scripts/test.sh, which installs typescript and @grafana/schema",
        tsc.display()
    );
    let dir = tempfile::tempdir().unwrap();
    // an object literal, so every field is checked against the type (excess properties too)
    std::fs::write(
        dir.path().join("dashboard.ts"),
        format!("import type {{ Dashboard }} from \"@grafana/schema\";\nexport const dashboard: Dashboard = {json};\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tsconfig.json"),
        format!(
            "{{\"compilerOptions\": {{\"strict\": true, \"noEmit\": true, \"skipLibCheck\": true, \
             \"module\": \"commonjs\", \"moduleResolution\": \"node\", \"target\": \"es2020\", \
             \"typeRoots\": [], \"baseUrl\": \".\", \"paths\": {{\"@grafana/schema\": [\"{}\"]}}}}, \
             \"files\": [\"dashboard.ts\"]}}",
            node.join("node_modules/@grafana/schema").display()
        ),
    )
    .unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&tsc).arg("--project").arg(dir.path().join("tsconfig.json")).output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "tsc: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
