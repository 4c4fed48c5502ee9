//! The `service` target: BetCycle runs the release itself (see `crate::service`) and
//! moves the environment's traffic to it — blue-green (healthy → switch → drain → stop
//! the old release) or canary (weighted steps, each analysed against the stable
//! release; a failure puts every request back on the stable release and stops the
//! canary).

use super::{Job, Outcome, Target};
use crate::ci::pipeline::deploy::{
    BlueGreen, Canary, Condition, PrometheusCheck, ServiceTarget, Strategy,
};
use crate::core::error::{Error, Result};
use crate::delivery::deployer::{Deployer, LogFile};
use crate::service::{Control, ReleaseSet, Services, SetSpec, Site, humantime};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl Target for ServiceTarget {
    fn deploy<'a>(
        &'a self,
        job: Job<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<Outcome>> + Send + 'a>> {
        Box::pin(deploy(self, job))
    }
}

/// The canary's analysis is held this many intervals at most for want of requests.
const INCONCLUSIVE_ROUNDS: u32 = 3;

async fn deploy(t: &ServiceTarget, job: Job<'_>) -> Result<Outcome> {
    let Job {
        deployer,
        deployment: d,
        release,
        project,
        shutdown,
    } = job;
    let strategy = release
        .deploy
        .get(&d.environment)
        .map(|def| def.strategy())
        .transpose()
        .map_err(|e| Error::Invalid(format!("strategy: {e}")))?
        .unwrap_or(Strategy::BlueGreen(BlueGreen::default()));
    let services = deployer.services().clone();
    let log = LogFile::create(&deployer.log_path(d.id))?;
    let dir = services.set_dir(&d.project, &d.environment, d.number);
    let workspace = dir.join("workspace");
    let _ = tokio::fs::remove_dir_all(&dir).await;
    super::exec::prepare(deployer, project, release, &workspace, &workspace).await?;
    let values = deployer.reveal(d, project.id, &t.secret_pairs()).await?;
    let mut env = crate::service::environment_of(d, release, t, &dir);
    env.extend(values);
    let set = services
        .start(SetSpec {
            project: d.project.clone(),
            environment: d.environment.clone(),
            deployment: d.number,
            release: release.number,
            label: release.label(),
            target: t.clone(),
            dir: dir.clone(),
            env,
            sandbox: crate::service::sandbox_of(&deployer.data_dir, project, &d.environment),
            adopt: Vec::new(),
        })
        .await?;
    let ports: Vec<String> = set
        .members
        .iter()
        .map(|m| m.supervised.port().to_string())
        .collect();
    let step = Step {
        deployer,
        id: d.id,
        log: &log,
    };
    step.note(format!(
        "started {} instance(s) of {} (ports {}); waiting until healthy ({} {})",
        set.members.len(),
        release.label(),
        ports.join(", "),
        t.health().path,
        humantime(t.timeout())
    ))
    .await;
    if let Err(e) = services.wait_healthy(&set, t.timeout(), shutdown).await {
        if shutdown.is_cancelled() {
            // The next start stops what an unfinished rollout left.
            return Err(e);
        }
        set.stop().await;
        log.write_line(true, &e.to_string());
        return Err(e);
    }
    step.note(format!("{} is healthy", release.label())).await;

    let old = services.site(&d.project, &d.environment);
    let site = |stable: Arc<ReleaseSet>, canary: Option<(Arc<ReleaseSet>, u32)>, sticky| Site {
        host: t.host.to_ascii_lowercase(),
        path: t.path.clone(),
        service: format!("{}/{}", d.project, d.environment),
        stable,
        canary,
        sticky,
        meters: Default::default(),
    };
    let (canary, drain) = match &strategy {
        Strategy::BlueGreen(bg) => (None, bg.drain()),
        Strategy::Canary(c) => (Some(c), c.drain()),
    };
    if let (Some(c), Some(old)) = (canary, old.as_ref()) {
        let controls = services.open_controls(&d.project, &d.environment, d.number);
        let prometheus = c.prometheus.as_ref().map(|p| {
            let query = p
                .query
                .replace("{{release}}", &set.label)
                .replace("{{stable}}", &old.stable.label)
                .replace("{{project}}", &d.project)
                .replace("{{environment}}", &d.environment);
            (p, query)
        });
        let verdict = analyse(
            &step,
            c,
            (&old.stable, &set),
            prometheus
                .as_ref()
                .map(|(p, q)| (&services, *p, q.as_str())),
            controls,
            shutdown,
            |w| services.publish(site(old.stable.clone(), Some((set.clone(), w)), c.sticky)),
        )
        .await;
        services.close_controls(&d.project, &d.environment);
        if let Err(reason) = verdict {
            // Every request goes back to the stable release; those in flight to the
            // canary finish first (as an old release's do after a switch).
            services.publish(site(old.stable.clone(), None, false))?;
            services.retire(set.clone(), drain).await;
            step.note(format!("rolled back: {reason}")).await;
            return Ok(Outcome::RolledBack(reason));
        }
    }
    if let Err(e) = services.publish(site(set.clone(), None, false)) {
        set.stop().await;
        return Err(e);
    }
    services.remember(&set, t).await?;
    match &old {
        Some(old) => {
            step.note(format!(
                "every request now goes to {}; draining {} (up to {})",
                release.label(),
                old.stable.label,
                humantime(drain)
            ))
            .await;
            let label = old.stable.label.clone();
            services.retire(old.stable.clone(), drain).await;
            step.note(format!("stopped {label}")).await;
        }
        None => {
            step.note(format!(
                "{} serves {}{}",
                release.label(),
                t.host,
                t.path.as_deref().unwrap_or("")
            ))
            .await
        }
    }
    Ok(Outcome::Live)
}

/// Runs the canary's steps; `Err` with the reason it failed (or was aborted).
async fn analyse(
    step: &Step<'_>,
    c: &Canary,
    (stable, canary): (&Arc<ReleaseSet>, &Arc<ReleaseSet>),
    prometheus: Option<(&Arc<Services>, &PrometheusCheck, &str)>,
    mut controls: tokio::sync::watch::Receiver<Control>,
    shutdown: &CancellationToken,
    publish: impl Fn(u32) -> Result<()>,
) -> std::result::Result<(), String> {
    let mut query_failures = 0;
    for (i, &weight) in c.steps.iter().enumerate() {
        if weight >= 100 {
            break;
        }
        publish(weight).map_err(|e| e.to_string())?;
        step.note(format!(
            "canary step {}/{}: {weight} % of requests to {}",
            i + 1,
            c.steps.len(),
            canary.label
        ))
        .await;
        let (from_canary, from_stable) = (canary.stats.snapshot(), stable.stats.snapshot());
        let mut deadline = tokio::time::Instant::now() + c.interval();
        let mut held = 0;
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = controls.changed() => {}
                () = shutdown.cancelled() => return Err("BetCycle stopped during the canary".into()),
            }
            let control = *controls.borrow();
            match control {
                Control::Promote => {
                    step.note("promoted by hand").await;
                    return Ok(());
                }
                Control::Abort => return Err("aborted by hand".into()),
                Control::Run => {}
            }
            let seen = canary.stats.snapshot().since(&from_canary);
            let report = || {
                format!(
                    "canary {}; stable {}",
                    seen.describe(),
                    stable.stats.snapshot().since(&from_stable).describe()
                )
            };
            if seen.requests >= c.min_requests() && seen.error_rate() > c.max_error_rate() {
                return Err(format!(
                    "error rate over {:.1} % at step {} ({report})",
                    c.max_error_rate() * 100.0,
                    i + 1,
                    report = report()
                ));
            }
            if tokio::time::Instant::now() < deadline {
                continue;
            }
            if seen.requests < c.min_requests() {
                held += 1;
                if held >= INCONCLUSIVE_ROUNDS {
                    return Err(format!(
                        "fewer than {} requests reached the canary in {} intervals ({})",
                        c.min_requests(),
                        held,
                        report()
                    ));
                }
                step.note(format!(
                    "step {}: fewer than {} requests so far, held for another {}",
                    i + 1,
                    c.min_requests(),
                    humantime(c.interval())
                ))
                .await;
                deadline += c.interval();
                continue;
            }
            if let (Some(limit), Some(p95)) = (c.max_p95(), seen.p95())
                && p95 > limit
            {
                return Err(format!(
                    "p95 latency over {} at step {} ({})",
                    humantime(limit),
                    i + 1,
                    report()
                ));
            }
            if let Some((services, check, query)) = prometheus {
                let condition = Condition::parse(&check.success_condition)?;
                let verdict = match services.query_prometheus(query).await {
                    Ok(result) if condition.holds(result) => Ok(result),
                    Ok(result) => Err(format!(
                        "prometheus: {result} does not meet {}",
                        check.success_condition
                    )),
                    Err(e) => Err(format!("prometheus: {e}")),
                };
                match verdict {
                    Ok(result) => {
                        step.note(format!(
                            "step {}: prometheus {result} meets {}",
                            i + 1,
                            check.success_condition
                        ))
                        .await
                    }
                    Err(why) => {
                        query_failures += 1;
                        if query_failures > check.failure_limit {
                            return Err(format!("{why} at step {} ({})", i + 1, report()));
                        }
                        step.note(format!(
                            "step {}: {why} ({query_failures} of {} allowed)",
                            i + 1,
                            check.failure_limit
                        ))
                        .await;
                    }
                }
            }
            step.note(format!("step {} passed: {}", i + 1, report()))
                .await;
            break;
        }
    }
    Ok(())
}

/// Progress of one deployment: a timeline entry and a log line.
struct Step<'a> {
    deployer: &'a Deployer,
    id: u64,
    log: &'a LogFile,
}

impl Step<'_> {
    async fn note(&self, what: impl Into<String>) {
        let what = what.into();
        self.log.write_line(false, &what);
        let entry = what.clone();
        let noted = self
            .deployer
            .store
            .update_deployment(
                self.id,
                move |d| {
                    d.note("betcycle", entry);
                    Ok(())
                },
                None,
            )
            .await;
        if let Err(e) = noted {
            tracing::error!(deployment = self.id, error = %e, "cannot note a deployment's progress");
        }
    }
}
