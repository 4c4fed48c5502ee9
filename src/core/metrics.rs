//! Prometheus metrics, exposed at `/metrics` in the OpenMetrics text format. HTTP metrics
//! are recorded by the HTTP layer; process and store figures are read at scrape time.

use crate::store::Store;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvironmentLabels {
    project: String,
    environment: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The DORA gauges, per project and environment, refreshed before each scrape.
struct DoraGauges {
    frequency: Family<EnvironmentLabels, FloatGauge>,
    lead_time: Family<EnvironmentLabels, FloatGauge>,
    fail_rate: Family<EnvironmentLabels, FloatGauge>,
    recovery: Family<EnvironmentLabels, FloatGauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram>,
    dora: DoraGauges,
}

impl Metrics {
    /// `extra` registers what other capabilities measure themselves (the proxy's
    /// families), so `core` needs to know none of them.
    pub fn new(store: Store, extra: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::default();
        extra(&mut registry);
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "betcycle_http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        let durations = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
        });
        registry.register(
            "betcycle_http_request_duration_seconds",
            "Time to produce an HTTP response's head, by route and method",
            durations.clone(),
        );
        // A gauge fixed at 1, not an OpenMetrics `info`, so the classic Prometheus text
        // parser (and `promtool check metrics`) accepts the exposition.
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: crate::VERSION.to_string(),
            })
            .set(1);
        registry.register(
            "betcycle_build_info",
            "Version of this BetCycle build",
            build,
        );
        let dora = DoraGauges {
            frequency: Family::default(),
            lead_time: Family::default(),
            fail_rate: Family::default(),
            recovery: Family::default(),
        };
        registry.register(
            "betcycle_dora_deployment_frequency_per_day",
            "Successful deployments per day over the last 30 days",
            dora.frequency.clone(),
        );
        registry.register(
            "betcycle_dora_change_lead_time_seconds",
            "Median time from commit to successful deployment over the last 30 days",
            dora.lead_time.clone(),
        );
        registry.register(
            "betcycle_dora_change_fail_rate",
            "Failed or rolled-back deployments over all finished ones, last 30 days",
            dora.fail_rate.clone(),
        );
        registry.register(
            "betcycle_dora_recovery_time_seconds",
            "Median time from a failed deployment to the next success, last 30 days",
            dora.recovery.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        registry.register_collector(Box::new(StoreCollector(store)));
        Self {
            registry,
            requests,
            durations,
            dora,
        }
    }

    /// Sets the DORA gauges of one environment; a figure without data is left out.
    pub fn set_dora(&self, project: &str, d: &crate::delivery::dora::Dora) {
        let labels = EnvironmentLabels {
            project: project.to_string(),
            environment: d.environment.clone(),
        };
        let set = |family: &Family<EnvironmentLabels, FloatGauge>, value: Option<f64>| match value {
            Some(v) => {
                family.get_or_create(&labels).set(v);
            }
            None => {
                family.remove(&labels);
            }
        };
        set(&self.dora.frequency, Some(d.deployment_frequency_per_day));
        set(&self.dora.lead_time, d.change_lead_time_seconds);
        set(&self.dora.fail_rate, d.change_fail_rate);
        set(&self.dora.recovery, d.recovery_time_seconds);
    }

    /// Counts one answered request. `route` is the matched route pattern, never the raw
    /// path, so label cardinality stays bounded.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                status,
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                method: method.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics exposition text, as `prometheus-client` encodes it.
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The classic Prometheus text format (0.0.4), for clients that do not ask for
    /// OpenMetrics (`curl`, `promtool check metrics`). The two differ only in how a
    /// counter family is named (`x` with samples `x_total` in OpenMetrics, `x_total`
    /// throughout in the classic format) and in the closing `# EOF`.
    pub fn render_text(&self) -> String {
        to_classic_text(&self.render_openmetrics())
    }
}

/// The standard `process_*` metrics, read from `/proc/self` on Linux.
#[derive(Debug)]
struct ProcessCollector;

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = process_stats() else {
            return Ok(());
        };
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            p.rss_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            p.vm_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors",
            p.open_fds,
        )?;
        gauge(
            &mut encoder,
            "process_max_fds",
            "Maximum number of open file descriptors",
            p.max_fds,
        )?;
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            p.start_time_seconds,
        )?;
        let cpu = ConstCounter::new(p.cpu_seconds);
        let metric = encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?;
        cpu.encode(metric)
    }
}

#[derive(Debug)]
struct StoreCollector(Store);

impl prometheus_client::collector::Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut encoder,
            "betcycle_store_size_bytes",
            "Size of the database file in bytes",
            self.0.file_size() as f64,
        )?;
        let dir = self.0.path().parent().unwrap_or(std::path::Path::new("."));
        match crate::core::health::free_disk_bytes(dir) {
            Some(free) => gauge(
                &mut encoder,
                "betcycle_data_disk_free_bytes",
                "Free space on the data directory's disk in bytes",
                free as f64,
            ),
            None => Ok(()),
        }
    }
}

/// Writes one constant gauge (for collectors that read their figure at scrape time).
pub(crate) fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// This process's resource use, as the `process_*` metrics and the dashboard show it.
#[derive(Clone, Debug, Default)]
pub struct ProcessStats {
    pub rss_bytes: f64,
    pub vm_bytes: f64,
    pub cpu_seconds: f64,
    pub open_fds: f64,
    pub max_fds: f64,
    pub start_time_seconds: f64,
}

/// Reads `/proc/self`; `None` where it is not available.
pub fn process_stats() -> Option<ProcessStats> {
    // SAFETY: sysconf only reads a system constant.
    let (page, ticks) = unsafe {
        (
            libc::sysconf(libc::_SC_PAGESIZE),
            libc::sysconf(libc::_SC_CLK_TCK),
        )
    };
    if page <= 0 || ticks <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Field numbers from proc(5), minus 3 for pid, comm and the 1-based count.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let (utime, stime, starttime) = (field(14)?, field(15)?, field(22)?);
    let (vsize, rss_pages) = (field(23)?, field(24)?);

    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse::<f64>().ok())
        .unwrap_or(0.0);

    Some(ProcessStats {
        rss_bytes: rss_pages * page as f64,
        vm_bytes: vsize,
        cpu_seconds: (utime + stime) / ticks as f64,
        open_fds,
        max_fds,
        start_time_seconds: boot_time + starttime / ticks as f64,
    })
}

fn to_classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn classic_text_names_counter_families_with_total() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total 3\n\
                  # HELP b_bytes Bytes.\n# TYPE b_bytes gauge\nb_bytes 1\n# EOF\n";
        assert_eq!(
            super::to_classic_text(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total 3\n\
             # HELP b_bytes Bytes.\n# TYPE b_bytes gauge\nb_bytes 1\n"
        );
    }
}
