//! Step caches end to end: the second run of a pipeline restores what the first saved
//! (a marker file), for a host step and a container step, and is faster; a changed key
//! input misses.

use crate::containers::busybox_image;
use crate::harness::{Server, tempdir};
use crate::run::{git, millis};
use crate::runs::{demo, trigger, wait_for};
use serde_json::Value;

async fn finished(server: &Server, n: u64) -> Value {
    trigger(server, "demo").await;
    let run = wait_for(server, "demo", n, |r| {
        r["status"] != "queued" && r["status"] != "running"
    })
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    run
}

fn took(run: &Value, step: usize) -> i64 {
    let s = &run["steps"][step];
    millis(&s["finished_at"]) - millis(&s["started_at"])
}

async fn log(server: &Server, n: u64, step: &str) -> String {
    server
        .get_text(&format!("/api/v1/projects/demo/runs/{n}/steps/{step}/log"))
        .await
}

#[tokio::test]
async fn the_second_run_restores_the_cache_and_is_faster() {
    let image = busybox_image();
    let dir = tempdir();
    let pipeline = format!(
        r#"steps:
  - name: deps
    run: if [ -f deps/marker ]; then echo "HIT $(cat deps/marker)"; else sleep 2; mkdir -p deps/sub; echo built-once > deps/marker; fi
    cache: {{ key: "deps-{{{{ hashFiles('lock.txt') }}}}", paths: [deps] }}
  - name: boxed
    image: {image}
    run: if [ -f out/marker ]; then echo "HIT boxed"; else sleep 2; mkdir -p out; echo x > out/marker; fi
    cache: {{ key: boxed, paths: [out] }}
"#
    );
    let (server, repo) = demo(dir.path(), &pipeline, &[]).await;
    std::fs::write(repo.join("lock.txt"), "v1").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "lock"]);

    let first = finished(&server, 1).await;
    let deps = log(&server, 1, "deps").await;
    assert!(deps.contains("betcycle: no cache for key deps-"), "{deps}");
    assert!(deps.contains("betcycle: cache saved: key deps-"), "{deps}");
    assert!(!deps.contains("HIT"), "{deps}");

    let second = finished(&server, 2).await;
    let deps = log(&server, 2, "deps").await;
    assert!(
        deps.contains("betcycle: cache restored: key deps-"),
        "{deps}"
    );
    assert!(deps.contains("HIT built-once"), "{deps}");
    assert!(
        !deps.contains("cache saved"),
        "a restored key is not saved again: {deps}"
    );
    let boxed = log(&server, 2, "boxed").await;
    assert!(
        boxed.contains("HIT boxed"),
        "a container step's cache too: {boxed}"
    );
    for step in [0, 1] {
        assert!(
            took(&second, step) + 1000 < took(&first, step),
            "step {step}: {} ms then {} ms",
            took(&first, step),
            took(&second, step)
        );
    }

    // A new lock file is a new key: a miss, then saved again.
    std::fs::write(repo.join("lock.txt"), "v2").unwrap();
    git(&repo, &["commit", "-qam", "lock v2"]);
    finished(&server, 3).await;
    let deps = log(&server, 3, "deps").await;
    assert!(deps.contains("no cache for key deps-"), "{deps}");
    assert!(!deps.contains("HIT"), "{deps}");
}
