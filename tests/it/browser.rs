//! Real Chromium, driven through chromedriver, looking at the console as a person would.
//! Every test here is `#[ignore]`d, so a plain `cargo test` reports them as ignored
//! rather than passing; `cargo test -- --include-ignored` runs them (CI does), and then a
//! missing chromedriver fails them.

use crate::harness::{ADMIN, ADMIN_PASSWORD, Server, tempdir};
use fantoccini::{Client, ClientBuilder, Locator};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver cannot run (apt-get install chromium chromium-driver)");
        let profile = tempdir();
        let mut options = serde_json::json!({
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        });
        if std::path::Path::new("/usr/bin/chromium").exists() {
            options["binary"] = "/usr/bin/chromium".into();
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        let webdriver = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&webdriver)
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => {
                    panic!("cannot start a browser session: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// The text of the first element matching `css`, once there. A page still finishing
    /// its navigation (a form's redirect) can abort the command or stale the element:
    /// that is tried again, for up to 15 s.
    async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let found = self.client.wait().for_element(Locator::Css(css)).await;
            let error = match found {
                Ok(element) => match element.text().await {
                    Ok(text) => return text,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            assert!(Instant::now() < deadline, "no text at {css}: {error}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a screenshot under $BETCYCLE_SCREENSHOTS, when set, for people to look at.
    async fn snapshot(&self, name: &str) {
        if let Ok(dir) = std::env::var("BETCYCLE_SCREENSHOTS") {
            let png = self.client.screenshot().await.unwrap();
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
        }
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Fills and submits the sign-in form.
async fn sign_in(browser: &Browser, base: &str, name: &str, password: &str) {
    let c = &browser.client;
    c.goto(&format!("{base}/login")).await.unwrap();
    c.find(Locator::Css("input[name=name]"))
        .await
        .unwrap()
        .send_keys(name)
        .await
        .unwrap();
    c.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    c.find(Locator::Css("form[action='/login'] button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "browser test: needs chromium and chromedriver; run with -- --include-ignored"]
async fn a_person_sees_the_dashboard_and_navigates_the_console() {
    let browser = Browser::start().await;
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let c = &browser.client;
    // Signed out, the console sends a person to the sign-in page first.
    c.goto(&server.url).await.unwrap();
    assert_eq!(browser.text("main h1").await, "Sign in");
    sign_in(&browser, &server.url, ADMIN, ADMIN_PASSWORD).await;
    c.wait()
        .for_element(Locator::Css("[data-stat=version]"))
        .await
        .unwrap();

    assert_eq!(c.title().await.unwrap(), "Dashboard · BetCycle");
    assert_eq!(browser.text("main h1").await, "Dashboard");
    assert_eq!(
        browser.text("[data-stat=version]").await,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(browser.text("[data-stat=health]").await, "Ready");
    assert!(browser.text("[data-stat=store-size]").await.ends_with("B"));
    let checks = browser.text("table.checks tbody").await;
    for name in ["store", "data_dir", "disk"] {
        assert!(checks.contains(name), "{checks}");
    }

    // The stylesheet and htmx really loaded from the embedded assets.
    let styled = c
        .execute(
            "return getComputedStyle(document.querySelector('.topbar')).backgroundColor",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(styled, "rgb(22, 27, 34)");
    let htmx = c
        .execute("return typeof window.htmx", vec![])
        .await
        .unwrap();
    assert_eq!(htmx, "object");

    // Navigation: every area is one click away and says plainly what is not built yet.
    let nav = c.find_all(Locator::Css("nav.sidebar a")).await.unwrap();
    assert_eq!(nav.len(), 10);
    c.find(Locator::LinkText("Cost"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .for_url(&url::Url::parse(&format!("{}/cost", server.url)).unwrap())
        .await
        .unwrap();
    assert_eq!(browser.text("main h1").await, "Cost");
    assert!(
        browser
            .text("main .notice")
            .await
            .contains("is not built yet")
    );
    let current = browser.text("nav a[aria-current=page]").await;
    assert_eq!(current, "Cost");
    // Policies has its screen: the starter policies are there from the first start.
    c.find(Locator::LinkText("Policies"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        browser
            .text("#policy-starter-deploy\\.rego")
            .await
            .contains("deploy")
    );
    browser.snapshot("policies").await;
    c.goto(&format!("{}/security", server.url)).await.unwrap();
    browser.snapshot("security").await;
    c.goto(&format!("{}/security/audit", server.url))
        .await
        .unwrap();
    assert!(browser.text("table.audit").await.contains("session.create"));
    browser.snapshot("audit").await;
    browser.close().await;
}

#[tokio::test]
#[ignore = "browser test: needs chromium and chromedriver; run with -- --include-ignored"]
async fn first_run_setup_then_sign_in_create_a_token_and_sign_out() {
    let browser = Browser::start().await;
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let setup_url = server.setup_url();
    let c = &browser.client;

    // The set-up link carries the token; the person picks a name and a password.
    c.goto(&setup_url).await.unwrap();
    assert_eq!(browser.text("main h1").await, "Set up BetCycle");
    browser.snapshot("setup").await;
    c.find(Locator::Css("input[name=name]"))
        .await
        .unwrap()
        .send_keys("ada")
        .await
        .unwrap();
    c.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys("analytical engine 1843")
        .await
        .unwrap();
    c.find(Locator::Css("form[action='/setup'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .for_element(Locator::Css("[data-stat=version]"))
        .await
        .unwrap();
    assert_eq!(browser.text("header .whoami").await, "ada");

    // Sign out, then in again with the new password.
    c.find(Locator::Css("form[action='/logout'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .for_element(Locator::Css("form[action='/login']"))
        .await
        .unwrap();
    sign_in(&browser, &server.url, "ada", "wrong password!").await;
    assert_eq!(
        browser.text("p.notice.error").await,
        "wrong user name or password"
    );
    sign_in(&browser, &server.url, "ada", "analytical engine 1843").await;
    c.wait()
        .for_element(Locator::Css("[data-stat=version]"))
        .await
        .unwrap();

    // Create an API token on the account page; it is shown once and works.
    c.goto(&format!("{}/account", server.url)).await.unwrap();
    c.find(Locator::Css(
        "form[action='/account/tokens'] input[name=name]",
    ))
    .await
    .unwrap()
    .send_keys("laptop")
    .await
    .unwrap();
    c.find(Locator::Css("form[action='/account/tokens'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let token = browser.text("[data-token]").await;
    browser.snapshot("account-new-token").await;
    assert!(token.starts_with("bct_"), "{token}");
    assert!(browser.text("table.tokens").await.contains("laptop"));
    let me: serde_json::Value = crate::harness::client()
        .get(format!("{}/api/v1/me", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"]["name"], "ada");
    assert_eq!(me["scope"], "write");

    // Reloading the account page does not show the secret again.
    c.goto(&format!("{}/account", server.url)).await.unwrap();
    assert!(c.find(Locator::Css("[data-token]")).await.is_err());

    c.find(Locator::Css("form[action='/logout'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .for_element(Locator::Css("form[action='/login']"))
        .await
        .unwrap();
    c.goto(&format!("{}/account", server.url)).await.unwrap();
    assert_eq!(
        browser.text("main h1").await,
        "Sign in",
        "signed out means signed out"
    );
    browser.close().await;
}

/// A server with an administrator and project `demo` on a new repository with `pipeline`.
async fn demo_project(root: &std::path::Path, pipeline: &str) -> Server {
    let repo = root.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    crate::run::git_repo(&repo, pipeline);
    let server = Server::start_admin(root, &[]);
    server
        .expect(
            reqwest::Method::POST,
            "/api/v1/projects",
            &serde_json::json!({"slug": "demo", "repository": repo.to_str().unwrap()}),
            201,
        )
        .await;
    server
}

/// Signs in as the administrator and opens project `demo`'s page.
async fn sign_in_to_demo(browser: &Browser, base: &str) {
    sign_in(browser, base, ADMIN, ADMIN_PASSWORD).await;
    let c = &browser.client;
    c.wait()
        .for_element(Locator::Css("[data-stat=version]"))
        .await
        .unwrap();
    c.goto(&format!("{base}/projects/demo")).await.unwrap();
}

/// On project `demo`'s page: presses "Run pipeline" and waits on the run page (which
/// refreshes itself while the run is active) until it shows the run succeeded.
async fn run_from_project_page(browser: &Browser, base: &str) {
    let c = &browser.client;
    c.find(Locator::Css("form[action='/projects/demo/runs'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Read in one call: the panel may be swapped between a find and a read.
        let status = c
            .execute(
                "return document.querySelector('[data-run-status]')?.textContent ?? ''",
                vec![],
            )
            .await
            .unwrap();
        let status = status.as_str().unwrap_or_default().to_string();
        if status == "succeeded" {
            break;
        }
        assert!(
            ["", "queued", "running"].contains(&status.as_str()),
            "status {status}"
        );
        assert!(
            Instant::now() < deadline,
            "the run page never showed the result"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        c.current_url()
            .await
            .unwrap()
            .as_str()
            .starts_with(&format!("{base}/projects/demo/runs/"))
    );
}

#[tokio::test]
#[ignore = "browser test: needs chromium and chromedriver; run with -- --include-ignored"]
async fn a_person_runs_the_pipeline_from_the_console_and_watches_it_finish() {
    let browser = Browser::start().await;
    let dir = tempdir();
    let server = demo_project(
        dir.path(),
        "steps:\n  - name: build\n    run: sleep 2; echo built it\n",
    )
    .await;

    sign_in_to_demo(&browser, &server.url).await;
    let c = &browser.client;
    run_from_project_page(&browser, &server.url).await;
    assert!(browser.text("pre.log").await.contains("built it"));
    browser.snapshot("run").await;

    // The step page follows the log over Server-Sent Events until it is complete.
    c.find(Locator::LinkText("Full screen"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while browser.text("[data-live-status]").await != "complete" {
        assert!(Instant::now() < deadline, "the live log never completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(browser.text("pre[data-stream]").await, "built it");
    browser.close().await;
}

/// Clicks a form's button and waits for the page the form leads to (a new document with a
/// notice), so nothing is read from the page being left.
async fn submit(browser: &Browser, button: &str) {
    let c = &browser.client;
    c.execute("document.body.dataset.left = '1'", vec![])
        .await
        .unwrap();
    c.find(Locator::Css(button))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let arrived = c
            .execute(
                "return !document.body.dataset.left && !!document.querySelector('p.notice')",
                vec![],
            )
            .await
            .unwrap_or_default();
        if arrived == serde_json::Value::Bool(true) {
            return;
        }
        assert!(Instant::now() < deadline, "no page after clicking {button}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
#[ignore = "browser test: needs chromium and chromedriver; run with -- --include-ignored"]
async fn a_maintainer_sets_restores_and_uses_a_secret_from_the_console() {
    let browser = Browser::start().await;
    let dir = tempdir();
    let server = demo_project(
        dir.path(),
        "steps:\n  - name: deploy\n    secrets: [DEPLOY_KEY]\n    run: echo \"key is $DEPLOY_KEY\"\n",
    )
    .await;

    sign_in_to_demo(&browser, &server.url).await;
    let c = &browser.client;
    c.find(Locator::LinkText("Secrets"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let set = async |name: &str, value: &str| {
        c.wait()
            .for_element(Locator::Css("#set-secret input[name=name]"))
            .await
            .unwrap()
            .send_keys(name)
            .await
            .unwrap();
        c.find(Locator::Css("#set-secret textarea[name=value]"))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
        submit(&browser, "#set-secret button[type=submit]").await;
    };
    set("DEPLOY_KEY", "first-deploy-key").await;
    set("DEPLOY_KEY", "second-deploy-key").await;
    let row = browser.text("#secret-DEPLOY_KEY").await;
    assert!(
        row.contains("DEPLOY_KEY") && row.contains("restore v1"),
        "{row}"
    );
    let page = c.source().await.unwrap();
    assert!(
        !page.contains("first-deploy-key") && !page.contains("second-deploy-key"),
        "the page never shows a value"
    );
    submit(&browser, "#secret-DEPLOY_KEY button[title^='set by']").await;
    assert_eq!(
        browser.text("p.notice.ok").await,
        "Version restored as a new version."
    );
    assert_eq!(
        browser.text("#secret-DEPLOY_KEY td:nth-child(2)").await,
        "3",
        "restoring v1 made version 3"
    );
    browser.snapshot("secrets").await;

    // The run uses the restored value, masked, and lists what it read.
    c.goto(&format!("{}/projects/demo", server.url))
        .await
        .unwrap();
    run_from_project_page(&browser, &server.url).await;
    assert_eq!(browser.text("pre.log").await, "key is ***");
    let used = browser.text("[data-run-secrets]").await;
    assert!(
        used.contains("DEPLOY_KEY") && used.contains("project v3"),
        "{used}"
    );
    browser.close().await;
}

#[tokio::test]
#[ignore = "browser test: needs chromium and chromedriver; run with -- --include-ignored"]
async fn a_maintainer_approves_a_deployment_from_the_environments_board() {
    let browser = Browser::start().await;
    let dir = tempdir();
    // Beside the data directory, where a sandboxed deploy may write.
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    let target = dir.path().join("out/live.txt");
    // A second administrator pushes and asks for the deployment; the one signed in
    // approves it.
    crate::harness::add_user(dir.path(), ADMIN, ADMIN_PASSWORD, true);
    crate::harness::add_user(dir.path(), "requester", "requester password 1", true);
    let requester = crate::harness::create_token(dir.path(), "requester", "admin");
    let server = demo_project(
        dir.path(),
        &format!(
            "steps:\n  - {{ name: build, run: 'true' }}\ndeploy:\n  production: {{ target: {{ kind: exec, run: 'echo \"$BETCYCLE_RELEASE\" > {}' }} }}\n",
            target.display()
        ),
    )
    .await;
    let env = server
        .request(
            reqwest::Method::PUT,
            "/api/v1/projects/demo/environments/production",
        )
        .json(&serde_json::json!({"protection": {"required_approvals": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(env.status(), 201);
    // The requester also starts the run (as if they pushed the commit).
    let triggered = crate::harness::client()
        .post(format!("{}/api/v1/projects/demo/runs", server.url))
        .bearer_auth(&requester)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(triggered.status(), 201);
    crate::runs::wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    let requested = crate::harness::client()
        .post(format!("{}/api/v1/projects/demo/deployments", server.url))
        .bearer_auth(&requester)
        .json(&serde_json::json!({"environment": "production"}))
        .send()
        .await
        .unwrap();
    assert_eq!(requested.status(), 201);
    // The dashboard lists it as waiting for the approver, not for its requester.
    let dashboard = server.get_text("/").await;
    assert!(dashboard.contains("id=\"waiting\"") && dashboard.contains("demo: deployment 1"));
    assert!(dashboard.contains("id=\"recent-deployments\""));
    let theirs = server
        .as_token(&requester)
        .get("/")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !theirs.contains("id=\"waiting\""),
        "the requester is asked to approve"
    );

    sign_in_to_demo(&browser, &server.url).await;
    let c = &browser.client;
    c.goto(&format!("{}/projects/demo/environments", server.url))
        .await
        .unwrap();
    let waiting = browser.text("#env-production [data-waiting='1']").await;
    assert!(
        waiting.contains("requested by user:requester") && waiting.contains("0/1 approvals"),
        "{waiting}"
    );
    c.find(Locator::Css("#env-production input[name=comment]"))
        .await
        .unwrap()
        .send_keys("looks good")
        .await
        .unwrap();
    submit(&browser, "#env-production button[value=approve]").await;
    assert_eq!(browser.text("p.notice.ok").await, "Approval recorded.");
    // The board shows the release live once the deployment has run.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        c.goto(&format!("{}/projects/demo/environments", server.url))
            .await
            .unwrap();
        if browser
            .text("#env-production [data-live]")
            .await
            .contains("release 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the release never went live");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap().trim(), "demo-1");
    browser.snapshot("environments").await;
    // The DORA chart has its scale, its days and today's successful deployment.
    let chart = eval(
        &browser,
        "return [document.querySelector('#dora .axis-y span').textContent,
                 document.querySelectorAll('svg.chart rect.ok:not([height=\"0\"])').length,
                 document.querySelector('#dora .axis-x').textContent.includes('deployments per day')]",
    )
    .await;
    assert_eq!(chart, serde_json::json!(["1", 1, true]));

    // Roll back asks first: dismissed, nothing is sent; accepted, the form goes.
    let rollback = "#env-production form[action$='/rollback'] button";
    c.find(Locator::Css(rollback))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let question = alert_text(&browser).await;
    assert!(question.starts_with("Roll back production?"), "{question}");
    c.dismiss_alert().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deployments = server.get_json("/api/v1/projects/demo/deployments").await;
    assert_eq!(deployments.as_array().unwrap().len(), 1, "{deployments}");
    c.execute("document.body.dataset.left = '1'", vec![])
        .await
        .unwrap();
    c.find(Locator::Css(rollback))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    alert_text(&browser).await;
    c.accept_alert().await.unwrap();
    // The form was sent: a new page, with the server's answer (one release: nothing to
    // roll back to).
    eval_until(
        &browser,
        "return document.body.dataset.left || ''",
        "the rollback form is sent",
        |left| left != "1",
    )
    .await;
    assert!(!browser.text("p.notice").await.is_empty());
    c.goto(&format!("{}/projects/demo/deployments/1", server.url))
        .await
        .unwrap();
    assert_eq!(browser.text("[data-deployment-status]").await, "succeeded");
    let page = c.source().await.unwrap();
    assert!(page.contains("approved by user:admin") && page.contains("looks good"));
    browser.snapshot("deployment").await;
    browser.close().await;
}

#[tokio::test]
#[ignore = "browser test: needs chromium and chromedriver; run with -- --include-ignored"]
async fn an_administrator_downloads_a_backup_from_the_settings_page() {
    let browser = Browser::start().await;
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    sign_in(&browser, &server.url, ADMIN, ADMIN_PASSWORD).await;
    let c = &browser.client;
    c.wait()
        .for_element(Locator::Css("[data-stat=version]"))
        .await
        .unwrap();
    // Settings → Backups.
    c.find(Locator::LinkText("Settings"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::LinkText("Backups"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(browser.text("main h1").await, "Backups");
    assert!(browser.text("main").await.contains("Master key"));
    let button = c.find(Locator::Css("a#download-backup")).await.unwrap();
    let href = button.attr("href").await.unwrap().unwrap();
    assert_eq!(href, "/api/v1/backup");
    // What the button downloads, fetched with the page's own session: a gzip archive.
    let got = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0]).then(async r => {
               const bytes = new Uint8Array(await r.arrayBuffer());
               done([r.status, r.headers.get('content-type'),
                     r.headers.get('content-disposition'), bytes[0], bytes[1], bytes.length]);
             });",
            vec![serde_json::Value::String(href)],
        )
        .await
        .unwrap();
    assert_eq!(got[0], 200, "{got}");
    assert_eq!(got[1], "application/gzip");
    assert!(
        got[2].as_str().unwrap().contains("betcycle-backup-"),
        "{got}"
    );
    // The gzip magic number.
    assert_eq!((got[3].as_u64(), got[4].as_u64()), (Some(0x1f), Some(0x8b)));
    assert!(got[5].as_u64().unwrap() > 1000, "{got}");
    browser.snapshot("backups").await;
    browser.close().await;
    let audit = server
        .get_json("/api/v1/audit?action=backup.download")
        .await;
    assert!(
        audit[0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("user:admin"),
        "{audit:#}"
    );
}

/// The text of the dialog a click opened (waiting for it to open).
async fn alert_text(browser: &Browser) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match browser.client.get_alert_text().await {
            Ok(text) => return text,
            Err(e) if Instant::now() > deadline => panic!("no dialog opened: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Evaluates `script` (a function body) in the page and returns its value.
async fn eval(browser: &Browser, script: &str) -> serde_json::Value {
    browser.client.execute(script, vec![]).await.unwrap()
}

/// Evaluates `script` until `done` accepts its value (within 20 s), and returns it.
async fn eval_until(
    browser: &Browser,
    script: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let done = &done;
    crate::harness::eventually(Duration::from_secs(20), what, move || async move {
        let value = eval(browser, script).await;
        if done(&value) {
            Ok(value)
        } else {
            Err(value.to_string())
        }
    })
    .await
}

#[tokio::test]
#[ignore = "browser test: needs chromium and chromedriver; run with -- --include-ignored"]
async fn the_run_page_draws_the_pipeline_and_its_log_follows_the_tail_until_scrolled_up() {
    let browser = Browser::start().await;
    let dir = tempdir();
    // `chatty` holds after line 100 until the test says go, so lines are still arriving
    // when the reader scrolls up, however slow the machine (the directory exists before
    // the server starts, so the sandboxed step can see the file made in it later).
    let signal = dir.path().join("signal");
    std::fs::create_dir_all(&signal).unwrap();
    let go = signal.join("go");
    let server = demo_project(
        dir.path(),
        &format!(
            "steps:\n  - name: prepare\n    run: echo ready\n  - name: chatty\n    depends_on: [prepare]\n    run: for i in $(seq 1 300); do echo \"line $i\"; if [ $i -eq 100 ]; then while [ ! -f {} ]; do sleep 0.05; done; fi; sleep 0.02; done\n  - name: lint\n    run: printf '\\033[34mblue\\033[0m\\n'\n",
            go.display()
        ),
    )
    .await;
    crate::runs::trigger(&server, "demo").await;
    sign_in_to_demo(&browser, &server.url).await;
    let c = &browser.client;
    c.goto(&format!("{}/projects/demo/runs/1", server.url))
        .await
        .unwrap();

    // The graph: `chatty` needs `prepare`, so it is drawn in the next column, with an
    // edge; while it runs its node shows a live elapsed time.
    eval_until(
        &browser,
        "return document.querySelector('[data-node=chatty]')?.getAttribute('aria-label') ?? ''",
        "chatty runs",
        |state| state == "chatty: running",
    )
    .await;
    let layout = eval(
        &browser,
        "const x = n => Number(document.querySelector(`[data-node=${n}] rect`).getAttribute('x'));
         return [x('prepare'), x('chatty'), x('lint'), document.querySelectorAll('svg.graph path.edge').length];",
    )
    .await;
    let layout: Vec<u64> = serde_json::from_value(layout).unwrap();
    assert!(layout[1] > layout[0], "{layout:?}");
    assert_eq!(layout[0], layout[2], "{layout:?}");
    assert_eq!(layout[3], 1, "{layout:?}");
    let elapsed =
        "return document.querySelector('[data-node=chatty] [data-node-time]').textContent";
    let first = eval(&browser, elapsed).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = eval(&browser, elapsed).await;
    assert_ne!(first, later, "the elapsed time stood still");
    assert!(later.as_str().unwrap().ends_with(" s"), "{later}");
    browser.snapshot("run-running").await;

    // The running step's log follows its tail…
    let log = "document.getElementById('step-1-log')";
    let lines = format!("return {log}.querySelectorAll('.line').length");
    let bottom =
        format!("const l = {log}; return l.scrollTop + l.clientHeight >= l.scrollHeight - 4");
    eval_until(&browser, &lines, "the log fills", |n| {
        n.as_u64() >= Some(60)
    })
    .await;
    assert_eq!(
        eval(&browser, &bottom).await,
        true,
        "not following the tail"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        eval(&browser, &bottom).await,
        true,
        "stopped following the tail"
    );
    // …until the reader scrolls up: then it stays put while lines arrive and the panel
    // refreshes (every 2 s).
    eval(&browser, &format!("{log}.scrollTop = 40; return 0")).await;
    let before = eval(&browser, &lines).await.as_u64().unwrap();
    std::fs::write(&go, "").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = eval(&browser, &lines).await.as_u64().unwrap();
    let status =
        server.get_json("/api/v1/projects/demo/runs/1").await["steps"][1]["status"].clone();
    assert!(
        after > before,
        "no new lines while scrolled up: {before} then {after}, chatty {status}"
    );
    assert_eq!(
        eval(&browser, &format!("return {log}.scrollTop")).await,
        40,
        "the log moved while the reader was scrolled up"
    );

    // Every line arrives once, numbered, by the end of the run.
    crate::runs::wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    eval_until(&browser, &lines, "every line arrives", |n| n == 300).await;
    assert_eq!(
        eval(
            &browser,
            "return document.getElementById('step-1-L300').innerText"
        )
        .await,
        "line 300"
    );
    // The search shows the matching lines only.
    c.find(Locator::Css("[data-log-search][aria-controls=step-1-log]"))
        .await
        .unwrap()
        .send_keys("line 29")
        .await
        .unwrap();
    assert_eq!(
        browser.text("#step-1 [data-search-count]").await,
        "11 matching lines"
    );
    // An address with a line anchor opens at that line; ANSI blue is the readable one.
    c.goto(&format!("{}/projects/demo/runs/1#step-1-L120", server.url))
        .await
        .unwrap();
    c.refresh().await.unwrap();
    assert_eq!(
        eval(
            &browser,
            "return document.querySelector('.line.target')?.id ?? ''"
        )
        .await,
        "step-1-L120"
    );
    let blue = eval(
        &browser,
        "const s = document.querySelector('#step-2-log .line span:not(.t)'); return s ? getComputedStyle(s).color : ''",
    )
    .await;
    assert_eq!(blue, "rgb(88, 166, 255)", "ANSI blue on the log background");
    browser.snapshot("run").await;
    browser.close().await;
}

#[tokio::test]
#[ignore = "browser test: needs chromium and chromedriver; run with -- --include-ignored"]
async fn a_person_filters_the_runs_list_by_status_and_searches_it() {
    let browser = Browser::start().await;
    let dir = tempdir();
    let server = demo_project(
        dir.path(),
        "steps:\n  - name: check\n    run: test -z \"$FAIL\"\n",
    )
    .await;
    for fail in ["", "", "1", ""] {
        let env = if fail.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::json!({"FAIL": fail})
        };
        server
            .expect(
                reqwest::Method::POST,
                "/api/v1/projects/demo/runs",
                &serde_json::json!({ "env": env }),
                201,
            )
            .await;
    }
    for n in 1..=4 {
        crate::runs::wait_for(&server, "demo", n, crate::hardening::finished).await;
    }
    sign_in_to_demo(&browser, &server.url).await;
    let c = &browser.client;
    c.goto(&format!("{}/runs", server.url)).await.unwrap();
    let rows = "return Array.from(document.querySelectorAll('table.runs tbody tr[data-run]')).map(r => r.dataset.run)";
    assert_eq!(
        eval(&browser, rows).await,
        serde_json::json!(["demo#4", "demo#3", "demo#2", "demo#1"])
    );
    browser.snapshot("runs").await;
    c.find(Locator::Css("select[name=status] option[value=failed]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Css("form.filters button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .for_url(&url::Url::parse(&format!("{}/runs?status=failed", server.url)).unwrap())
        .await
        .unwrap();
    assert_eq!(eval(&browser, rows).await, serde_json::json!(["demo#3"]));
    // Search by the commit's subject (the repository's one commit) and by number.
    c.goto(&format!("{}/projects/demo/runs?q=%232", server.url))
        .await
        .unwrap();
    assert_eq!(eval(&browser, rows).await, serde_json::json!(["demo#2"]));
    c.goto(&format!(
        "{}/projects/demo/runs?q=no+such+words",
        server.url
    ))
    .await
    .unwrap();
    assert_eq!(eval(&browser, rows).await, serde_json::json!([]));
    assert_eq!(
        browser.text("table.runs tbody td.muted").await,
        "No runs match these filters."
    );
    browser.close().await;
}

/// The axe-core script: `$BETCYCLE_AXE`, or `target/axe/axe.min.js` (.ci/run puts it there
/// from the PyPI package axe-selenium-python).
fn axe_source() -> String {
    let path = std::env::var("BETCYCLE_AXE").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/axe/axe.min.js").to_string()
    });
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("cannot read axe-core at {path} ({e}); .ci/run fetches it (see its axe step)")
    })
}

/// The serious and critical accessibility violations axe-core finds on the open page, as
/// `rule: node, node…` lines.
async fn axe_violations(browser: &Browser, axe: &str) -> Vec<String> {
    browser.client.execute(axe, vec![]).await.unwrap();
    let found = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] }).then(r => done(
               r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                 .map(v => v.id + ': ' + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', '))))
               .catch(e => done(['axe failed: ' + e]));",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(found).unwrap()
}

#[tokio::test]
#[ignore = "browser test: needs chromium and chromedriver; run with -- --include-ignored"]
async fn the_main_pages_fit_a_phone_and_pass_axe() {
    let axe = axe_source();
    let browser = Browser::start().await;
    let dir = tempdir();
    let server = demo_project(
        dir.path(),
        "steps:\n  - { name: build, run: 'echo built' }\n  - { name: test, run: 'echo tested', depends_on: [build] }\n",
    )
    .await;
    crate::runs::trigger(&server, "demo").await;
    crate::runs::wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    crate::agents::create_agent(&server, "builder").await;
    // A public status page with one probe on it, checking the server itself.
    let probe = serde_json::json!({"name": "site", "kind": "http", "project": "demo",
        "target": format!("{}/healthz", server.url), "interval": "1s"});
    server
        .expect(reqwest::Method::POST, "/api/v1/probes", &probe, 201)
        .await;
    let shown = serde_json::json!({"enabled": true});
    server
        .expect(
            reqwest::Method::PUT,
            "/api/v1/projects/demo/status-page",
            &shown,
            200,
        )
        .await;
    sign_in_to_demo(&browser, &server.url).await;
    let c = &browser.client;
    let pages = [
        ("dashboard", "/"),
        ("projects", "/projects"),
        ("project", "/projects/demo"),
        ("project-runs", "/projects/demo/runs"),
        ("project-settings", "/projects/demo/settings"),
        ("runs", "/runs"),
        ("run", "/projects/demo/runs/1"),
        ("step", "/projects/demo/runs/1/steps/0"),
        ("environments", "/projects/demo/environments"),
        ("triggers", "/projects/demo/triggers"),
        ("trends", "/projects/demo/trends"),
        ("secrets", "/projects/demo/secrets"),
        ("policies", "/policies"),
        ("users", "/security/users"),
        ("audit", "/security/audit"),
        ("agents", "/settings/agents"),
        ("monitoring", "/monitoring"),
        ("status-page", "/status/demo"),
        ("account", "/account"),
    ];
    let mut problems = Vec::new();
    for (name, path) in pages {
        c.goto(&format!("{}{path}", server.url)).await.unwrap();
        c.wait()
            .for_element(Locator::Css("main h1"))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        browser.snapshot(&format!("desktop-{name}")).await;
        for v in axe_violations(&browser, &axe).await {
            problems.push(format!("{path}: {v}"));
        }
    }
    c.set_window_size(390, 844).await.unwrap();
    for (name, path) in pages {
        c.goto(&format!("{}{path}", server.url)).await.unwrap();
        c.wait()
            .for_element(Locator::Css("main h1"))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let widths = eval(
            &browser,
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]",
        )
        .await;
        let widths: Vec<u64> = serde_json::from_value(widths).unwrap();
        if widths[0] > widths[1] {
            problems.push(format!("{path}: scrolls sideways on a phone ({widths:?})"));
        }
        browser.snapshot(&format!("phone-{name}")).await;
    }
    // On a phone the navigation folds behind Menu.
    let nav = "return getComputedStyle(document.getElementById('nav')).display";
    assert_eq!(eval(&browser, nav).await, "none");
    c.find(Locator::Css("[data-nav-toggle]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(eval(&browser, nav).await, "grid");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    browser.close().await;
}

#[tokio::test]
#[ignore = "browser test: needs chromium and chromedriver; run with -- --include-ignored"]
async fn a_deployment_log_keeps_its_scroll_position_across_refreshes() {
    let browser = Browser::start().await;
    let dir = tempdir();
    let server = demo_project(
        dir.path(),
        "steps:\n  - { name: build, run: 'true' }\ndeploy:\n  staging: { target: { kind: exec, run: 'for i in $(seq 1 400); do echo \"deploying $i\"; sleep 0.02; done' } }\n",
    )
    .await;
    server
        .expect(
            reqwest::Method::PUT,
            "/api/v1/projects/demo/environments/staging",
            &serde_json::json!({}),
            201,
        )
        .await;
    crate::runs::trigger(&server, "demo").await;
    crate::runs::wait_for(&server, "demo", 1, |r| r["status"] == "succeeded").await;
    server
        .expect(
            reqwest::Method::POST,
            "/api/v1/projects/demo/deployments",
            &serde_json::json!({"environment": "staging"}),
            201,
        )
        .await;
    sign_in_to_demo(&browser, &server.url).await;
    let c = &browser.client;
    c.goto(&format!("{}/projects/demo/deployments/1", server.url))
        .await
        .unwrap();
    let lines = "return document.querySelectorAll('#deploy-log .line').length";
    eval_until(&browser, lines, "the deployment log fills", |n| {
        n.as_u64() >= Some(100)
    })
    .await;
    eval(
        &browser,
        "document.getElementById('deploy-log').scrollTop = 40; return 0",
    )
    .await;
    let before = eval(&browser, lines).await.as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        eval(&browser, lines).await.as_u64().unwrap() > before,
        "no refresh happened"
    );
    assert_eq!(
        eval(
            &browser,
            "return document.getElementById('deploy-log').scrollTop"
        )
        .await,
        40,
        "the refresh moved the log"
    );
    browser.close().await;
}

#[tokio::test]
#[ignore = "browser test: needs chromium and chromedriver; run with -- --include-ignored"]
async fn a_developer_watches_a_canary_and_aborts_it_from_its_deployment_page() {
    use crate::service::{Project, canary_started, pipeline, service_target};
    let axe = axe_source();
    let browser = Browser::start().await;
    let dir = tempdir();
    let strategy = "    strategy: { kind: canary, steps: [25, 100], interval: 10m }\n";
    let mut project = Project::new(dir.path(), &pipeline(&service_target(""), strategy)).await;
    let v1 = project.release("v1", "ok", None).await;
    assert_eq!(project.deploy(v1).await["status"], "succeeded");
    let v2 = project.release("v2", "ok", None).await;
    let number = canary_started(&project, v2).await;
    for _ in 0..20 {
        crate::harness::client()
            .get(format!("{}/", project.proxy))
            .header("host", "app.test")
            .send()
            .await
            .unwrap();
    }
    let base = project.server.url.clone();
    sign_in(&browser, &base, ADMIN, ADMIN_PASSWORD).await;
    let c = &browser.client;
    c.goto(&format!("{base}/projects/demo/deployments/{number}"))
        .await
        .unwrap();
    c.wait()
        .for_element(Locator::Css("#service figure.split"))
        .await
        .unwrap();
    let split = c
        .find(Locator::Css("#service figure.split svg"))
        .await
        .unwrap()
        .attr("aria-label")
        .await
        .unwrap()
        .unwrap_or_default();
    assert_eq!(split, "demo-1 75 %, canary demo-2 25 %");
    let rows = browser.text("#service table").await;
    assert!(
        rows.contains("demo-2") && rows.contains("1/1 healthy"),
        "{rows}"
    );
    browser.snapshot("deployment-canary").await;
    let problems = axe_violations(&browser, &axe).await;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The board says what serves.
    c.goto(&format!("{base}/projects/demo/environments"))
        .await
        .unwrap();
    let serving = browser.text("[data-serving]").await;
    assert!(serving.contains("canary demo-2 at 25 %"), "{serving}");
    c.goto(&format!("{base}/projects/demo/deployments/{number}"))
        .await
        .unwrap();
    c.find(Locator::Css("#service button[value=abort]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let question = alert_text(&browser).await;
    assert!(question.starts_with("Stop the canary?"), "{question}");
    c.accept_alert().await.unwrap();
    eval_until(
        &browser,
        "const s = document.querySelector('[data-deployment-status]'); return s ? s.textContent : ''",
        "the deployment shows it was rolled back",
        |v| v == "rolled_back",
    )
    .await;
    project.server.kill();
    browser.close().await;
}
