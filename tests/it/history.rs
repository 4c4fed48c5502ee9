//! Run history in the console (`/runs`, `/projects/{slug}/runs`) over plain HTTP, on a
//! seeded store: filters, search, paging by cursor and who sees what; and the clean log
//! downloads.

use crate::harness::{
    ADMIN, ADMIN_PASSWORD, Server, add_user, betcycle, create_token, run, tempdir,
};

/// The runs a history page lists, as `project#number`, in order.
fn listed(page: &str) -> Vec<String> {
    page.split("<tr data-run=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_string())
        .collect()
}

/// The address of a page's "Older runs" link.
fn older(page: &str) -> Option<String> {
    let at = page.find("rel=\"next\"")?;
    let start = page[..at].rfind("href=\"")? + 6;
    Some(
        page[start..at]
            .trim_end_matches("\" ")
            .replace("&#38;", "&")
            .replace("&amp;", "&"),
    )
}

#[tokio::test]
async fn run_history_filters_searches_and_pages_through_a_long_history() {
    let dir = tempdir();
    add_user(dir.path(), ADMIN, ADMIN_PASSWORD, true);
    add_user(dir.path(), "outsider", "outsider password 1", false);
    let data = dir.path().join("data");
    let (code, _, stderr) = run(betcycle(dir.path())
        .args(["dev", "seed", "--runs", "3000", "--projects", "3"])
        .arg("--data-dir")
        .arg(&data));
    assert_eq!(code, 0, "{stderr}");
    let outsider = create_token(dir.path(), "outsider", "read");
    let server = Server::start_admin(dir.path(), &[]);

    // Newest first, 50 a page, every project; the next page starts where this one ended.
    let first = server.get_text("/runs").await;
    let runs = listed(&first);
    assert_eq!(runs.len(), 50);
    assert_eq!(runs[0], "seed-3#1000");
    assert_eq!(runs[1], "seed-2#1000");
    let next = older(&first).expect("an Older runs link");
    let second = listed(&server.get_text(&format!("/runs{next}")).await);
    assert_eq!(second.len(), 50);
    assert_eq!(second[0], "seed-1#984");
    assert!(runs.iter().all(|r| !second.contains(r)));

    // A project's history: by status through its index, by branch, by words.
    let failed = listed(&server.get_text("/projects/seed-1/runs?status=failed").await);
    assert_eq!(failed.len(), 50);
    assert_eq!(failed[0], "seed-1#994");
    assert_eq!(failed[1], "seed-1#984");
    let feature = listed(
        &server
            .get_text("/projects/seed-1/runs?branch=feature-1")
            .await,
    );
    assert_eq!(feature[0], "seed-1#972");
    // The seeded subjects and authors cycle: words from both, any case, narrow it down.
    let page = server
        .get_text("/projects/seed-1/runs?q=grace+PAGINATION")
        .await;
    let found = listed(&page);
    assert!(!found.is_empty() && found.len() <= 50, "{found:?}");
    assert!(page.contains("Add pagination to the orders API"));
    assert!(page.contains("Grace Hopper"));
    let exact = listed(&server.get_text("/projects/seed-2/runs?q=%23123").await);
    assert!(exact.contains(&"seed-2#123".to_string()), "{exact:?}");

    // A filter that matches nothing looks at a bounded number of runs and says so, with
    // a link to go on looking.
    let page = server.get_text("/runs?actor=user:nobody").await;
    assert!(listed(&page).is_empty());
    assert!(page.contains("No runs match these filters."));
    assert!(page.contains("2000 runs looked at"), "{page}");
    let rest = older(&page).expect("a link to look further");
    let page = server.get_text(&format!("/runs{rest}")).await;
    assert!(
        listed(&page).is_empty() && older(&page).is_none(),
        "{rest} {:?}",
        older(&page)
    );

    // A bad status is a 400 with the choices; someone in no project sees no runs.
    let bad = server.get("/runs?status=sunny").await;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("unknown run status"));
    let page = server
        .as_token(&outsider)
        .get("/runs")
        .await
        .text()
        .await
        .unwrap();
    assert!(listed(&page).is_empty(), "an outsider sees runs");
    let refused = server
        .as_token(&outsider)
        .get("/projects/seed-1/runs")
        .await;
    assert_eq!(refused.status(), 403);
    // As a viewer they see the project's runs, and no tab to a page they may not open.
    let (status, _) = server
        .send_json(
            reqwest::Method::PUT,
            "/api/v1/projects/seed-1/members/user:outsider",
            serde_json::json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(status, 204);
    let viewer = server.as_token(&outsider);
    let page = viewer
        .get("/projects/seed-1/runs")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(listed(&page).len(), 50);
    assert!(
        !page.contains("/projects/seed-1/secrets"),
        "a viewer is offered Secrets"
    );
    let page = server.get_text("/projects/seed-1/runs").await;
    assert!(page.contains("href=\"/projects/seed-1/secrets\""));
    // On `/runs` they see that project's runs only.
    let page = viewer.get("/runs").await.text().await.unwrap();
    assert!(
        listed(&page).iter().all(|r| r.starts_with("seed-1#")),
        "{:?}",
        listed(&page)
    );
}

#[tokio::test]
async fn a_step_log_downloads_as_plain_text_or_with_its_colours() {
    let dir = tempdir();
    let (server, _) = crate::runs::demo(
        dir.path(),
        "steps:\n  - name: paint\n    run: echo oops >&2; sleep 0.3; printf 'plain\\n\\033[31mred\\033[0m\\n'\n",
        &[],
    )
    .await;
    crate::runs::trigger(&server, "demo").await;
    let run = crate::runs::wait_for(&server, "demo", 1, crate::hardening::finished).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let log = "/api/v1/projects/demo/runs/1/steps/0/log";
    assert_eq!(
        server.get_text(&format!("{log}?format=text")).await,
        "oops\nplain\nred\n"
    );
    assert_eq!(
        server.get_text(&format!("{log}?format=ansi")).await,
        "oops\nplain\n\x1b[31mred\x1b[0m\n"
    );
    // The stored form (the default) keeps each line's time and stream.
    let raw = server.get_text(log).await;
    assert!(
        raw.lines()
            .all(|l| l.split(' ').nth(1).is_some_and(|t| t == "o" || t == "e")),
        "{raw}"
    );
    let bad = server.get(&format!("{log}?format=pdf")).await;
    assert_eq!(bad.status(), 400);
    assert!(
        bad.text()
            .await
            .unwrap()
            .contains("expected raw, text or ansi")
    );
    // The run records its commit's subject and author; the run page shows them.
    assert!(!run["commit_subject"].as_str().unwrap().is_empty(), "{run}");
    assert!(!run["commit_author"].as_str().unwrap().is_empty(), "{run}");
    let page = server.get_text("/projects/demo/runs/1").await;
    assert!(page.contains(run["commit_subject"].as_str().unwrap()));
}
