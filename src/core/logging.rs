//! Logging: `tracing` to stderr (text on a terminal, JSON otherwise, or as configured) and
//! to daily rolling JSON files under the log directory, keeping `log.max_files` of them.
//! Every line written inside a request carries its `request_id` (from the request span).
//! With `otlp.endpoint`, BetCycle's own spans (requests, runs, steps) also go to an
//! OpenTelemetry collector ([`super::telemetry`]).

use crate::core::config::{LogConfig, LogFormat};
use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

/// Keeps the file writer flushing and the span exporter running; drop it last, at exit
/// (the spans not yet sent are sent then).
pub struct LogGuard {
    _file: Option<tracing_appender::non_blocking::WorkerGuard>,
    _spans: Option<super::telemetry::Exporter>,
}

pub fn init(config: &LogConfig) -> Result<LogGuard, String> {
    let filter = || EnvFilter::builder().parse_lossy(&config.level);
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let console = if json {
        fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed()
    } else {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter())
            .boxed()
    };

    let (file, guard) = if config.max_files == 0 {
        (None, None)
    } else {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| format!("cannot create log directory {}: {e}", config.dir.display()))?;
        let appender = tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("betcycle")
            .filename_suffix("log")
            .max_log_files(config.max_files)
            .build(&config.dir)
            .map_err(|e| format!("cannot write logs to {}: {e}", config.dir.display()))?;
        // The writer thread's queue is allocated whole and its pages become resident as
        // lines pass through: tracing-appender's default of 128,000 lines is 4 MiB that a
        // long-running server slowly takes on. 8,192 lines is ample for a file writer;
        // when it is full a line is dropped rather than the server held up.
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .buffered_lines_limit(8192)
            .finish(appender);
        let layer = fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .with_filter(filter());
        (Some(layer), Some(guard))
    };

    let (spans, exporter) = match &config.otlp_endpoint {
        Some(endpoint) => {
            let (layer, exporter) = super::telemetry::layer(endpoint)?;
            (Some(layer), Some(exporter))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(console)
        .with(file)
        .with(spans)
        .try_init()
        .map_err(|e| format!("cannot start logging: {e}"))?;
    Ok(LogGuard {
        _file: guard,
        _spans: exporter,
    })
}
