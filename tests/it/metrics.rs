//! `/metrics`: parseable Prometheus text, counting what happened; `promtool check metrics`
//! when available (required in CI with BETCYCLE_PROMTOOL=1).

use crate::harness::{Server, content_type, tempdir};
use serde_json::Value;
use std::collections::HashMap;

/// Parses the classic text format into `series → value`, checking each family's TYPE.
fn parse(text: &str) -> (HashMap<String, f64>, HashMap<String, String>) {
    let mut samples = HashMap::new();
    let mut types = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with('#') {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {line}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            samples.insert(series.to_string(), value);
        }
    }
    (samples, types)
}

#[tokio::test]
async fn metrics_count_requests_and_report_process_and_store() {
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    for _ in 0..3 {
        server.get("/healthz").await;
    }
    server.get("/definitely/not/here").await;

    let response = server.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(content_type(&response).starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    let (samples, types) = parse(&text);

    assert_eq!(
        samples[r#"betcycle_http_requests_total{route="/healthz",method="GET",status="200"}"#],
        3.0
    );
    // Unknown paths share one label value: no cardinality explosion.
    assert_eq!(
        samples[r#"betcycle_http_requests_total{route="unmatched",method="GET",status="404"}"#],
        1.0
    );
    assert_eq!(
        samples[r#"betcycle_http_request_duration_seconds_count{route="/healthz",method="GET"}"#],
        3.0
    );
    assert_eq!(types["betcycle_http_requests_total"], "counter");
    assert_eq!(types["betcycle_http_request_duration_seconds"], "histogram");
    assert_eq!(
        samples[&format!(
            "betcycle_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )],
        1.0
    );

    let rss = samples["process_resident_memory_bytes"];
    assert!(rss > 1e6 && rss < 1e9, "rss {rss}");
    assert!(samples["process_open_fds"] >= 3.0);
    assert!(samples.contains_key("process_cpu_seconds_total"));
    let store_size = std::fs::metadata(server.data_dir.join("betcycle.redb"))
        .unwrap()
        .len() as f64;
    assert!(samples["betcycle_store_size_bytes"] > 0.0);
    assert!((samples["betcycle_store_size_bytes"] - store_size).abs() < 1e6);

    // OpenMetrics on request, as Prometheus asks for it.
    let om = crate::harness::client()
        .get(format!("{}/metrics", server.url))
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(content_type(&om).starts_with("application/openmetrics-text"));
    let om = om.text().await.unwrap();
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE betcycle_http_requests counter"));

    promtool_check(&text);
}

fn promtool_check(text: &str) {
    use std::io::Write;
    let required = std::env::var("BETCYCLE_PROMTOOL").is_ok_and(|v| v == "1");
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(_) if !required => {
            eprintln!(
                "promtool not found: skipped `promtool check metrics` (set BETCYCLE_PROMTOOL=1 to require it)"
            );
            return;
        }
        Err(e) => panic!("BETCYCLE_PROMTOOL=1 but promtool cannot run: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `betcycle_*` / `process_*` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let starts = (rest.starts_with("betcycle_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..end].to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    names
}

#[tokio::test]
async fn the_shipped_dashboard_and_alert_rules_name_only_metrics_a_real_scrape_has() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempdir();
    // A service behind the proxy with a failed deployment, a recovery and traffic, so
    // every family has series (a family without any is not exposed).
    let p = crate::service::pipeline(&crate::service::service_target(""), "");
    let mut project = crate::service::Project::new(dir.path(), &p).await;
    let v1 = project.release("v1", "ok", None).await;
    assert_eq!(project.deploy(v1).await["status"], "succeeded");
    let sick = project.release("v2", "sick", None).await;
    assert_eq!(project.deploy(sick).await["status"], "failed");
    assert_eq!(project.deploy(v1).await["status"], "succeeded");
    assert_eq!(project.get("app.test").await.0, 200);
    assert_eq!(project.get("nobody.test").await.0, 404);
    let text = project.server.get_text("/metrics").await;
    let exposed: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/packaging/grafana/betcycle.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("every target has an expr")
                .to_string()
        })
        .collect();
    assert!(exprs.len() >= 16, "{}", exprs.len());
    let rules: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(format!("{root}/packaging/prometheus/alerts.yml")).unwrap(),
    )
    .expect("the rules are YAML");
    let alerts: Vec<String> = rules["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            r["expr"]
                .as_str()
                .expect("every rule has an expr")
                .to_string()
        })
        .collect();
    assert!(alerts.len() >= 8);
    exprs.extend(alerts);
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                exposed.contains(name.as_str()),
                "{name} (in `{expr}`) is not in /metrics:\n{text}"
            );
        }
    }

    // promtool's own check of the rules, as for the exposition above.
    let required = std::env::var("BETCYCLE_PROMTOOL").is_ok_and(|v| v == "1");
    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(format!("{root}/packaging/prometheus/alerts.yml"))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) if !required => eprintln!("promtool not found: skipped `promtool check rules`"),
        Err(e) => panic!("BETCYCLE_PROMTOOL=1 but promtool cannot run: {e}"),
    }
    project.server.kill();
}
