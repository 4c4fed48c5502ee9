//! One step: its secrets revealed (and masked), its attempts through the executor with
//! retries, then its reports and artifacts.

use super::*;

/// Runs every step, independent ones in parallel.
pub(super) async fn run_steps(
    spec: Arc<RunSpec>,
    masking: Arc<Masking>,
    cancel: CancellationToken,
) -> Vec<StepResult> {
    let observer: Arc<dyn Observer> = masking.clone();
    let n = spec.pipeline.steps.len();
    let selected: Vec<bool> = spec
        .pipeline
        .steps
        .iter()
        .map(|s| match &spec.only {
            None => true,
            Some(only) => s.name == *only || s.name.starts_with(&format!("{only} (")),
        })
        .collect();
    let mut results: Vec<Option<StepResult>> = vec![None; n];
    let mut running = JoinSet::new();
    let mut started = vec![false; n];

    loop {
        // Start every step whose dependencies are done, up to the parallelism.
        for i in 0..n {
            if started[i] || running.len() >= spec.parallelism.max(1) {
                continue;
            }
            let step = &spec.pipeline.steps[i];
            let needs: Vec<usize> = step
                .needs
                .iter()
                .copied()
                .filter(|d| selected[*d])
                .collect();
            if needs.iter().any(|d| results[*d].is_none()) {
                continue;
            }
            started[i] = true;
            let skip = why_skip(&spec, i, &needs, &results, &selected, &cancel);
            if skip.is_none()
                && let Some(previous) = spec.reuse.get(&step.name)
            {
                observer.step_finished(previous);
                results[i] = Some(previous.clone());
                continue;
            }
            if let Some(reason) = skip {
                let result = skipped(&step.name, reason);
                if selected[i] {
                    observer.step_finished(&result);
                }
                results[i] = Some(result);
                continue;
            }
            let (spec, observer, masking, cancel) = (
                spec.clone(),
                observer.clone(),
                masking.clone(),
                cancel.clone(),
            );
            running.spawn(async move {
                (
                    i,
                    run_step(&spec, i, observer, &masking.masker, &cancel).await,
                )
            });
        }
        match running.join_next().await {
            Some(Ok((i, result))) => {
                observer.step_finished(&result);
                results[i] = Some(result);
            }
            Some(Err(e)) => panic!("a step task failed: {e}"),
            None => break,
        }
    }
    results
        .into_iter()
        .zip(selected)
        .filter(|(_, selected)| *selected)
        .map(|(r, _)| r.expect("every step finished"))
        .collect()
}

/// Reveals the step's `secrets:` into `env`, each value added to the run's masker before
/// the step can print anything.
pub(super) async fn reveal_into(
    spec: &RunSpec,
    step: &Step,
    observer: &Arc<dyn Observer>,
    masker: &Masker,
    env: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    if step.secrets.is_empty() {
        return Ok(());
    }
    match spec.secrets.reveal(step).await {
        Ok(revealed) => {
            for (name, value) in revealed.env {
                masker.add(&value);
                env.insert(name, value);
            }
            if let Some(notice) = revealed.notice {
                observer.line(&step.name, Stream::Stderr, &format!("betcycle: {notice}"));
            }
            Ok(())
        }
        Err(reason) => {
            observer.line(&step.name, Stream::Stderr, &format!("betcycle: {reason}"));
            Err(reason)
        }
    }
}

/// A step attempt's status, exit code and reason from how its process ended.
pub(super) fn outcome_of(step: &Step, exit: Exit) -> (StepStatus, Option<i32>, String) {
    match exit {
        Exit::Code(0) => (StepStatus::Succeeded, Some(0), String::new()),
        Exit::Code(code) if step.allow_failure => (
            StepStatus::FailedAllowed,
            Some(code),
            format!("exit code {code} (allowed to fail)"),
        ),
        Exit::Code(code) => (StepStatus::Failed, Some(code), format!("exit code {code}")),
        Exit::TimedOut => {
            let limit = step.timeout.unwrap_or_default().as_secs();
            (
                StepStatus::TimedOut,
                None,
                format!("timed out after {limit} s"),
            )
        }
        Exit::Cancelled => (StepStatus::Cancelled, None, "cancelled".into()),
        Exit::SpawnFailed(e) => (StepStatus::Failed, None, e),
    }
}

/// A step's rendered cache key and whether it was restored.
pub(super) struct CacheUse {
    key: String,
    restored: bool,
}

/// Restores the step's cache, saying in its log what happened; a failure is said and
/// the step runs without it.
pub(super) async fn restore_cache(
    spec: &RunSpec,
    step: &Step,
    observer: &Arc<dyn Observer>,
) -> Option<CacheUse> {
    let def = step.cache.as_ref()?;
    let say =
        |text: String| observer.line(&step.name, Stream::Stderr, &format!("betcycle: {text}"));
    let Some(space) = spec.cache.clone() else {
        say("caches are not kept here; running without".into());
        return None;
    };
    // Hashing the key's files and unpacking read the disk: off the async threads.
    let (template, ws) = (def.key.clone(), spec.workspace.clone());
    let done = tokio::task::spawn_blocking(move || {
        let key = crate::ci::pipeline::Cache::render(&template, |patterns| {
            cache::CacheSpace::hash_files(&ws, patterns)
        })
        .map_err(|e| format!("cache key: {e}"))?;
        let restored = space.restore(&key, &ws);
        Ok::<_, String>((key, restored))
    })
    .await
    .unwrap_or_else(|e| Err(format!("the cache restore failed: {e}")));
    let (key, restored) = match done {
        Ok(done) => done,
        Err(e) => {
            say(e);
            return None;
        }
    };
    let restored = match restored {
        Ok(cache::Outcome::Restored { bytes }) => {
            say(format!("cache restored: key {key}, {bytes} bytes"));
            true
        }
        Ok(_) => {
            say(format!(
                "no cache for key {key}; it is saved if the step succeeds"
            ));
            false
        }
        Err(e) => {
            say(e);
            false
        }
    };
    Some(CacheUse { key, restored })
}

/// Saves the step's cache under its key, unless it was restored from it.
pub(super) async fn save_cache(
    spec: &RunSpec,
    step: &Step,
    cache: Option<CacheUse>,
    observer: &Arc<dyn Observer>,
) {
    let (Some(def), Some(space), Some(used)) = (&step.cache, spec.cache.clone(), cache) else {
        return;
    };
    if used.restored {
        return;
    }
    let (key, ws, paths) = (used.key.clone(), spec.workspace.clone(), def.paths.clone());
    let saved = tokio::task::spawn_blocking(move || space.save(&key, &ws, &paths))
        .await
        .unwrap_or_else(|e| Err(format!("the save failed: {e}")));
    let text = match saved {
        Ok(cache::Outcome::Saved { bytes }) => {
            format!("cache saved: key {}, {bytes} bytes", used.key)
        }
        Ok(cache::Outcome::Skipped(why)) => format!("cache not saved: {why}"),
        Ok(_) => return,
        Err(e) => e,
    };
    observer.line(&step.name, Stream::Stderr, &format!("betcycle: {text}"));
}
