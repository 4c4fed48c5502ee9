//! A run's `services:`: started before the steps, each waited for until its `ready`
//! command succeeds, stopped after the last step.

use super::*;

/// How long services may take to become ready.
pub(super) const SERVICE_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts every service and waits for its `ready` command to succeed.
pub(super) async fn start_services(
    spec: &RunSpec,
    observer: &Arc<dyn Observer>,
    stop: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<Exit>>, String> {
    let mut tasks = Vec::new();
    for service in &spec.pipeline.services {
        let env = spec.env(&service.env, service.container.is_some());
        let label = format!("service {}", service.name);
        let on_lines: OnLines = {
            let (observer, label) = (observer.clone(), label.clone());
            Arc::new(move |stream, lines: &[&str]| observer.lines(&label, stream, lines))
        };
        let started = spec.spawn(Process {
            script: service.run.clone(),
            workspace: spec.workspace.clone(),
            dir: spec.workspace.clone(),
            env: env.clone(),
            timeout: None,
            cancel: stop.clone(),
            on_lines,
            container: container_spec(service.container.as_ref(), Some(&service.name)),
        })?;
        // Why a service could not start goes in its log (a missing image, say).
        let task = tokio::spawn({
            let (observer, label) = (observer.clone(), label.clone());
            async move {
                let exit = started.await;
                if let Exit::SpawnFailed(e) = &exit {
                    observer.line(&label, Stream::Stderr, &format!("betcycle: {e}"));
                }
                exit
            }
        });
        if let Some(ready) = &service.ready {
            let deadline = tokio::time::Instant::now() + SERVICE_READY_TIMEOUT;
            loop {
                if task.is_finished() {
                    let why = match task.await {
                        Ok(Exit::SpawnFailed(e)) => format!(": {e}"),
                        Ok(Exit::Code(code)) => format!(" (exit code {code})"),
                        _ => String::new(),
                    };
                    return Err(format!(
                        "service \"{}\" exited before it was ready{why}",
                        service.name
                    ));
                }
                // A container service's probe runs inside its container, as a host
                // service's runs beside it.
                let container = container_spec(service.container.as_ref(), None).map(|c| {
                    container::ContainerSpec {
                        exec_in: Some(service.name.clone()),
                        ..c
                    }
                });
                let probe = spec
                    .spawn(Process {
                        script: ready.clone(),
                        workspace: spec.workspace.clone(),
                        dir: spec.workspace.clone(),
                        env: env.clone(),
                        timeout: Some(std::time::Duration::from_secs(5)),
                        cancel: stop.clone(),
                        on_lines: Arc::new(|_, _| {}),
                        container,
                    })?
                    .await;
                if probe == Exit::Code(0) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline || stop.is_cancelled() {
                    return Err(format!(
                        "service \"{}\" did not become ready within {} s (`{ready}` kept failing)",
                        service.name,
                        SERVICE_READY_TIMEOUT.as_secs()
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
        tasks.push(task);
    }
    Ok(tasks)
}
