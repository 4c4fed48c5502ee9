//! Health probes: `GET <path>` on an instance every interval. An instance takes traffic
//! once `success_threshold` probes in a row answered 2xx or 3xx, and stops taking it
//! after `failure_threshold` failures in a row; the last probes are kept to show (and to
//! explain a release that never became healthy).

use super::{InstanceState, Member};
use crate::ci::pipeline::deploy::Health;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How many probe results an instance keeps.
pub const HISTORY: usize = 20;

/// One probe.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    pub at: jiff::Timestamp,
    pub ok: bool,
    /// `200 in 3 ms`, `404 in 2 ms`, `connection refused`, `timed out after 2s`.
    pub detail: String,
}

/// Probes `member` until `stop`.
pub async fn probe(
    member: Arc<Member>,
    spec: Health,
    http: reqwest::Client,
    store: crate::store::Store,
    stop: CancellationToken,
) {
    let (mut passed, mut failed) = (0u32, 0u32);
    let mut ticker = tokio::time::interval(spec.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let running = !matches!(
            *member.supervised.state.borrow(),
            InstanceState::Exited | InstanceState::CrashLoop | InstanceState::Stopped
        );
        let result = if running {
            once(&http, member.supervised.port(), &spec).await
        } else {
            ProbeResult {
                at: jiff::Timestamp::now(),
                ok: false,
                detail: "the process is not running".into(),
            }
        };
        if result.ok {
            passed += 1;
            failed = 0;
        } else {
            failed += 1;
            passed = 0;
        }
        let was = member.upstream.healthy.load(Ordering::Relaxed);
        // No process, no traffic: no need to wait for the failure threshold.
        let now = if !running || (was && failed >= spec.failure_threshold) {
            false
        } else {
            was || passed >= spec.success_threshold
        };
        if now != was {
            member.upstream.healthy.store(now, Ordering::Relaxed);
            let r = member.supervised.snapshot();
            if !now {
                tracing::warn!(service = %member.service, instance = r.slot, detail = %result.detail, "a service instance failed its health check");
            }
            store.announce(crate::core::events::Event::ServiceHealth {
                project: r.project,
                environment: r.environment,
                release: r.release,
                instance: r.slot,
                healthy: now,
                detail: result.detail.clone(),
            });
        }
        let mut history = member.probes.lock().expect("probe lock");
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(result);
        drop(history);
        member.probed.notify_waiters();
    }
}

async fn once(http: &reqwest::Client, port: u16, spec: &Health) -> ProbeResult {
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{port}{}", spec.path);
    let answer = http.get(&url).timeout(spec.timeout).send().await;
    let ms = started.elapsed().as_millis();
    let (ok, detail) = match answer {
        Ok(r) => {
            let status = r.status();
            (
                status.is_success() || status.is_redirection(),
                format!("{} in {ms} ms", status.as_u16()),
            )
        }
        Err(e) if e.is_timeout() => (false, format!("timed out after {:?}", spec.timeout)),
        Err(e) if e.is_connect() => (false, "connection refused".to_string()),
        Err(e) => (false, format!("{e}")),
    };
    ProbeResult {
        at: jiff::Timestamp::now(),
        ok,
        detail,
    }
}

/// The probe client: no proxy from the environment, no redirects followed.
pub fn client() -> reqwest::Client {
    crate::core::outbound::client_builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .expect("the probe client builds")
}
