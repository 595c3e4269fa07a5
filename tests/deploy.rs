//! The deployment files users apply: every manifest kustomize renders (base and the MinIO
//! overlay) passes `kubernetes-validate --strict`; the config each ConfigMap carries is a valid
//! ksql-lake config whose grace period fits the pod's; the PrometheusRule holds the same alerts
//! as deploy/prometheus; the Dockerfile passes hadolint; docker-compose.yml runs the pieces the
//! README says. The tools come from the test venv (scripts/test.sh).

mod support;

use std::path::PathBuf;
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn tool(name: &str, args: &[&str]) -> (bool, String) {
    let binary = support::venv().join("bin").join(name);
    assert!(binary.is_file(), "{} missing: run scripts/test.sh", binary.display());
    let output =
        tokio::time::timeout(Duration::from_secs(120), tokio::process::Command::new(binary).args(args).output())
            .await
            .expect("finishes within 120 s")
            .unwrap();
    (
        output.status.success(),
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
    )
}

/// A Python check over a rendered manifest (PyYAML from the venv).
async fn python(script: &str, input: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, input).unwrap();
    tool("python", &["-c", script, file.to_str().unwrap()]).await
}

#[tokio::test]
async fn every_rendered_manifest_validates_and_carries_a_valid_config() {
    for overlay in ["deploy/kubernetes/base", "deploy/kubernetes/overlays/minio"] {
        let path = root().join(overlay);
        let (ok, rendered) = tool("kubectl", &["kustomize", path.to_str().unwrap()]).await;
        assert!(ok, "kubectl kustomize {overlay}: {rendered}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, &rendered).unwrap();
        let (ok, report) = tool("kubernetes-validate", &["--strict", file.to_str().unwrap()]).await;
        assert!(ok && !report.contains("ERROR") && !report.contains("failed"), "{overlay}: {report}");
        for kind in ["configmap", "secret", "service", "statefulset", "poddisruptionbudget"] {
            assert!(report.contains(&format!("passed for resource {kind}/ksql-lake")), "{overlay}: {kind}: {report}");
        }
        // the config, the pod's grace period and the probes
        let script = "import sys, json, yaml\n\
            docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]\n\
            by = {d['kind']: d for d in docs}\n\
            pod = by['StatefulSet']['spec']['template']['spec']\n\
            c = pod['containers'][0]\n\
            print(json.dumps({'config': by['ConfigMap']['data']['ksql-lake.toml'], 'grace': pod['terminationGracePeriodSeconds'],\n\
              'replicas': by['StatefulSet']['spec']['replicas'], 'liveness': c['livenessProbe']['httpGet']['path'],\n\
              'readiness': c['readinessProbe']['httpGet']['path'], 'user': pod['securityContext']['runAsUser'],\n\
              'read_only': c['securityContext']['readOnlyRootFilesystem'],\n\
              'rules': by['PrometheusRule']['spec']['groups'], 'kinds': sorted(by),\n\
              'secret': by['Secret'].get('stringData', {})}))";
        let (ok, out) = python(script, &rendered).await;
        assert!(ok, "{out}");
        let facts: serde_json::Value = serde_json::from_str(&out).unwrap();
        // the pod's environment: the Secret's variables and the ordinal
        let mut env: Vec<(String, String)> = facts["secret"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(key, value)| (key.clone(), value.as_str().unwrap_or_default().to_string()))
            .collect();
        env.push(("KSQL_LAKE_CLUSTER__ORDINAL".to_string(), "1".to_string()));
        let config = ksql_lake::config::Config::from_toml(facts["config"].as_str().unwrap(), overlay, env).unwrap();
        assert!(
            config.shutdown_grace.as_secs() < facts["grace"].as_u64().unwrap(),
            "{overlay}: the pod outlives the flush"
        );
        assert_eq!(u64::from(config.cluster.0), facts["replicas"].as_u64().unwrap(), "{overlay}: [cluster] replicas");
        assert_eq!((facts["liveness"].as_str(), facts["readiness"].as_str()), (Some("/healthz"), Some("/readyz")));
        assert_ne!(facts["user"], 0);
        assert_eq!(facts["read_only"], true);
        // the PrometheusRule's alerts are deploy/prometheus's
        let (ok, rules) = tool(
            "python",
            &[
                "-c",
                "import sys, json, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))['groups']))",
                root().join("deploy/prometheus/ksql-lake-rules.yml").to_str().unwrap(),
            ],
        )
        .await;
        assert!(ok, "{rules}");
        assert_eq!(facts["rules"], serde_json::from_str::<serde_json::Value>(&rules).unwrap(), "{overlay}");
    }
}

#[tokio::test]
async fn the_dockerfile_passes_hadolint() {
    let (ok, report) = tool("hadolint", &[root().join("Dockerfile").to_str().unwrap()]).await;
    assert!(ok, "hadolint: {report}");
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("USER 65532:65532"), "non-root");
    assert!(dockerfile.matches("FROM ").count() >= 2, "multi-stage");
}

#[tokio::test]
async fn docker_compose_runs_the_whole_trial_stack() {
    let script = "import sys, json, yaml\nd = yaml.safe_load(open(sys.argv[1]))\n\
        print(json.dumps({'services': sorted(d['services']), 'lake': d['services']['ksql-lake']}))";
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let (ok, out) = python(script, &text).await;
    assert!(ok, "{out}");
    let facts: serde_json::Value = serde_json::from_str(&out).unwrap();
    for service in ["kafka", "ksqldb-server", "minio", "prometheus", "grafana", "ksql-lake"] {
        assert!(facts["services"].as_array().unwrap().contains(&service.into()), "{service}: {facts}");
    }
    // the config ksql-lake gets there is valid
    let config = std::fs::read_to_string(root().join("deploy/compose/ksql-lake.toml")).unwrap();
    ksql_lake::config::Config::from_toml(&config, "compose", Vec::new()).unwrap();
}
