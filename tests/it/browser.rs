//! Real Chromium, driven through chromedriver, looking at the console as a person would.
//! Runs when BETCYCLE_BROWSER_TESTS=1 (CI sets it); otherwise each test says it skipped.

use crate::harness::{Server, tempdir};
use fantoccini::{Client, ClientBuilder, Locator};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(test: &str) -> Option<Browser> {
        if std::env::var("BETCYCLE_BROWSER_TESTS").as_deref() != Ok("1") {
            eprintln!("{test}: skipped (set BETCYCLE_BROWSER_TESTS=1 to run browser tests)");
            return None;
        }
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
            .expect("BETCYCLE_BROWSER_TESTS=1 but chromedriver cannot run (apt-get install chromium-driver)");
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
        Some(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .wait()
            .for_element(Locator::Css(css))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test]
async fn a_person_sees_the_dashboard_and_navigates_the_console() {
    let Some(browser) =
        Browser::start("a_person_sees_the_dashboard_and_navigates_the_console").await
    else {
        return;
    };
    let dir = tempdir();
    let server = Server::start(dir.path(), &[]);
    let c = &browser.client;
    c.goto(&server.url).await.unwrap();

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
    c.find(Locator::LinkText("Policies"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .for_url(&url::Url::parse(&format!("{}/policies", server.url)).unwrap())
        .await
        .unwrap();
    assert_eq!(browser.text("main h1").await, "Policies");
    assert!(
        browser
            .text("main .notice")
            .await
            .contains("is not built yet")
    );
    let current = browser.text("nav a[aria-current=page]").await;
    assert_eq!(current, "Policies");

    let png = c.screenshot().await.unwrap();
    assert!(png.len() > 1000);
    browser.close().await;
}
