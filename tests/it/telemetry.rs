//! OTLP export: with `--otlp-endpoint`, a request's span and a run's span with its steps
//! as children arrive at a small real OTLP/HTTP receiver in the test (protobuf, decoded
//! with the OpenTelemetry protocol crate), with the service's name; without it nothing is
//! sent; a bad endpoint is refused before the server starts.

use crate::harness::{Server, betcycle, eventually, run, tempdir};
use crate::run::git_repo;
use crate::runs::{project, trigger, wait_for};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the receiver got: the service name of each batch with its spans.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP receiver on loopback: `POST /v1/traces` with protobuf, answered 200.
async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    for batch in request.resource_spans {
                        let service = batch
                            .resource
                            .as_ref()
                            .map(|r| text(&r.attributes, "service.name"))
                            .unwrap_or_default();
                        for scope in batch.scope_spans {
                            for span in scope.spans {
                                sink.lock().unwrap().push((service.clone(), span));
                            }
                        }
                    }
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// An attribute's value as text.
fn text(attributes: &[KeyValue], key: &str) -> String {
    attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .map(|AnyValue { value }| match value {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            Some(any_value::Value::IntValue(i)) => i.to_string(),
            Some(any_value::Value::BoolValue(b)) => b.to_string(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

fn named<'a>(spans: &'a [(String, Span)], name: &str) -> Option<&'a Span> {
    spans.iter().map(|(_, s)| s).find(|s| s.name == name)
}

#[tokio::test]
async fn request_and_run_spans_reach_an_otlp_receiver_with_steps_inside_their_run() {
    let dir = tempdir();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git_repo(
        &repo,
        "steps:\n  - { name: build, run: 'echo built' }\n  - { name: test, run: 'exit 3', depends_on: [build] }\n",
    );
    let (url, received) = receiver().await;
    let mut cmd = betcycle(dir.path());
    // Export every 100 ms instead of every 5 s (the SDK's own variable).
    cmd.env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let server = Server::start_admin_with(cmd, dir.path(), &["--otlp-endpoint", &url]);
    project(&server, "demo", &repo).await;
    trigger(&server, "demo").await;
    wait_for(&server, "demo", 1, |r| r["status"] == "failed").await;
    let response = server.get("/api/v1/projects/nope").await;
    assert_eq!(response.status(), 404);

    let spans = eventually(Duration::from_secs(20), "the spans", || async {
        let spans = received.lock().unwrap().clone();
        let have = |name: &str| named(&spans, name).is_some();
        if have("run demo #1")
            && have("step build")
            && have("step test")
            && have("GET /api/v1/projects/{slug}")
        {
            Ok(spans)
        } else {
            let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
            Err(format!("{names:?}"))
        }
    })
    .await;
    assert!(
        spans.iter().all(|(service, _)| service == "betcycle"),
        "service.name"
    );
    // BetCycle's own spans only: requests, runs and steps.
    for (_, span) in &spans {
        assert!(
            span.name.starts_with("run ")
                || span.name.starts_with("step ")
                || span.name.contains(" /"),
            "a library's span was exported: {}",
            span.name
        );
    }
    let request = named(&spans, "GET /api/v1/projects/{slug}").unwrap();
    assert_eq!(request.kind, 2, "server kind");
    assert_eq!(
        text(&request.attributes, "http.route"),
        "/api/v1/projects/{slug}"
    );
    assert_eq!(
        text(&request.attributes, "http.response.status_code"),
        "404"
    );
    assert!(!text(&request.attributes, "request_id").is_empty());
    let run_span = named(&spans, "run demo #1").unwrap();
    assert_eq!(text(&run_span.attributes, "project"), "demo");
    assert_eq!(text(&run_span.attributes, "status"), "failed");
    assert_eq!(run_span.status.as_ref().map(|s| s.code), Some(2), "error");
    for (step, status, code) in [("build", "succeeded", "0"), ("test", "failed", "3")] {
        let span = named(&spans, &format!("step {step}")).unwrap();
        assert_eq!(
            span.trace_id, run_span.trace_id,
            "{step} in the run's trace"
        );
        assert_eq!(
            span.parent_span_id, run_span.span_id,
            "{step} inside the run"
        );
        assert_eq!(text(&span.attributes, "status"), status);
        assert_eq!(text(&span.attributes, "exit_code"), code);
        assert!(span.start_time_unix_nano >= run_span.start_time_unix_nano);
        assert!(span.end_time_unix_nano <= run_span.end_time_unix_nano);
    }
    let build = named(&spans, "step build").unwrap();
    let test = named(&spans, "step test").unwrap();
    assert!(
        build.end_time_unix_nano <= test.start_time_unix_nano,
        "in order"
    );
    server.stop();

    // Without the option nothing is sent.
    let before = received.lock().unwrap().len();
    let quiet = tempdir();
    let server = Server::start(quiet.path(), &[]);
    server.get("/healthz").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop();
    assert_eq!(received.lock().unwrap().len(), before);

    // A bad endpoint: refused with the option's name, nothing started.
    let (code, _, stderr) = run(betcycle(quiet.path())
        .arg("serve")
        .args(["--otlp-endpoint", "ftp://collector:4318"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("otlp.endpoint") && stderr.contains("expected an http(s):// URL"),
        "{stderr}"
    );
}
