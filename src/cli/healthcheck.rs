//! `betcycle healthcheck`: asks a running server's `/readyz`, for a container
//! `HEALTHCHECK` where there is no shell or curl.

use super::{ConfigArgs, Failure};
use crate::core::config::Config;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Healthcheck {
    /// Server base URL or full readiness URL [default: http://<listen>/readyz].
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Give up after this long.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = crate::core::config::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    config: ConfigArgs,
}

impl Healthcheck {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        // The local server's own address: with TLS its certificate names a host, not
        // 127.0.0.1, and this only asks whether the process is ready, so the certificate
        // is not verified for it. A URL given with --url is verified as usual.
        let (url, local_tls) = match self.url {
            Some(url) if url.trim_end_matches('/').ends_with("/readyz") => (url, false),
            Some(url) => (format!("{}/readyz", url.trim_end_matches('/')), false),
            None => {
                let (config, _) = Config::load(&self.config.inputs(env))
                    .map_err(|e| Failure::Usage(e.to_string()))?;
                let scheme = if config.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                (
                    format!("{scheme}://{}/readyz", local(config.listen)),
                    config.tls.is_some(),
                )
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))?;
        let outcome = runtime.block_on(async {
            let client = crate::core::outbound::client_builder()
                .timeout(self.timeout)
                .tls_danger_accept_invalid_certs(local_tls)
                .build()
                .map_err(|e| e.to_string())?;
            let response = client
                .get(&url)
                .send()
                .await
                .map_err(|e| crate::core::outbound::describe(&e))?;
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("{status}: {}", body.trim()))
            }
        });
        match outcome {
            Ok(()) => {
                println!("ready: {url}");
                Ok(ExitCode::SUCCESS)
            }
            Err(reason) => Err(Failure::Runtime(format!("not ready: {url}: {reason}"))),
        }
    }
}

/// The address to reach a server listening on `addr` from this host.
fn local(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}
