//! Optional OTLP export of BetCycle's own spans — each request (`GET /api/v1/…`), each
//! run and each of its steps — to an OpenTelemetry collector, off unless `otlp.endpoint`
//! is set. tracing's spans become OpenTelemetry spans (tracing-opentelemetry); the SDK's
//! batch processor sends them as OTLP/HTTP protobuf from its own thread, through the same
//! reqwest client (rustls, the system's roots) BetCycle uses for every other call out.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::time::Duration;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The running exporter; dropping it sends the spans not yet sent and stops it.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("betcycle: the last spans could not be exported: {e}");
        }
    }
}

/// The OTLP client: reqwest on a small runtime of its own, since the batch processor
/// exports from a plain thread.
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err("spans are exported from the batch processor's thread only".into());
        }
        let (parts, body) = request.into_parts();
        let request = self
            .http
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body);
        self.runtime.block_on(async move {
            let answer = request.send().await?;
            let (status, headers) = (answer.status(), answer.headers().clone());
            let mut response = Response::new(answer.bytes().await?);
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            Ok(response)
        })
    }
}

/// The layer that turns BetCycle's info spans into OpenTelemetry spans sent to
/// `endpoint` (the traces URL in full), and the exporter to keep until exit.
pub fn layer<S>(endpoint: &str) -> Result<(Box<dyn Layer<S> + Send + Sync>, Exporter), String>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("otlp")
        .build()
        .map_err(|e| format!("otlp: cannot start its runtime: {e}"))?;
    let http = crate::core::outbound::client_builder()
        .timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("otlp: cannot build the HTTP client: {e}"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Client { http, runtime })
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("otlp.endpoint {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name("betcycle")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            crate::VERSION,
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("betcycle");
    // BetCycle's own spans only, not its libraries' (hyper, h2, redb).
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target("betcycle", tracing::Level::INFO))
        .boxed();
    Ok((layer, Exporter { provider }))
}
