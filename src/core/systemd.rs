//! Talking to systemd when it runs BetCycle as a `Type=notify` service
//! (`systemd/betcycle.service`): `READY=1` once the listener is bound and the workers are
//! up, `WATCHDOG=1` pings while the store answers (so a wedged process is restarted), and
//! `STOPPING=1` when a shutdown begins. Without `NOTIFY_SOCKET` (not under systemd) every
//! call does nothing. Pipeline steps never see `NOTIFY_SOCKET`: their environment is clean.

use crate::store::Store;
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

pub fn ready(url: &str) {
    let status = format!("serving {url}");
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: finishing in-flight work"),
    ]);
}

/// With `WatchdogSec=` set, the watchdog worker: pings at half the interval for as long
/// as a store read succeeds; a store that stops answering lets the watchdog fire.
pub fn watchdog(
    store: Store,
    shutdown: CancellationToken,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let every = sd_notify::watchdog_enabled()? / 2;
    Some(async move {
        loop {
            match store.ping().await {
                Ok(()) => notify(&[NotifyState::Watchdog]),
                Err(e) => {
                    tracing::error!(error = %e, "store check failed; not pinging the systemd watchdog")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    })
}

/// Does nothing without `NOTIFY_SOCKET` (sd_notify's own check).
fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
