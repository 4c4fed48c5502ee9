//! The console over plain HTTP: pages, navigation, partials and asset caching.

use crate::harness::{Server, content_type, tempdir};

const AREAS: [&str; 9] = [
    "Projects",
    "Runs",
    "Environments",
    "Policies",
    "Catalog",
    "Monitoring",
    "Security",
    "Cost",
    "Settings",
];

#[tokio::test]
async fn dashboard_shows_version_uptime_store_and_health() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let response = server.get("/").await;
    assert_eq!(response.status(), 200);
    assert!(content_type(&response).starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(page.contains(&format!(
        "data-stat=\"version\">{}<",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(page.contains("data-stat=\"health\">Ready<"));
    assert!(page.contains("data-stat=\"store-size\">"));
    assert!(page.contains("data-stat=\"uptime\">"));
    for area in AREAS {
        assert!(page.contains(&format!(">{area}</a>")), "nav lacks {area}");
    }
    // The status panel refreshes itself through htmx.
    assert!(page.contains("hx-get=\"/dashboard/status\""));
    let partial = server.get_text("/dashboard/status").await;
    assert!(partial.contains("data-stat=\"health\">Ready<"));
    assert!(
        !partial.contains("<html"),
        "partial must not carry the page frame"
    );
    let refresh = server
        .request(reqwest::Method::GET, "/")
        .header("HX-Request", "true");
    let refresh = refresh.send().await.unwrap().text().await.unwrap();
    // An htmx refresh of / is the status panel too (uptime may have moved on).
    assert!(refresh.contains("data-stat=\"health\">Ready<") && !refresh.contains("<html"));
}

#[tokio::test]
async fn areas_not_built_yet_say_so() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    // Projects, Runs, Policies and Monitoring have their own screens, whole; the others
    // are (partly) placeholders.
    let built = ["Projects", "Runs", "Policies", "Monitoring"];
    let page = server.get_text("/monitoring").await;
    assert!(page.contains("<h1>Monitoring</h1>") && !page.contains("not built yet"));
    for area in AREAS.iter().filter(|a| !built.contains(a)) {
        let response = server.get(&format!("/{}", area.to_lowercase())).await;
        assert_eq!(response.status(), 200, "{area}");
        let page = response.text().await.unwrap();
        assert!(page.contains(&format!("<h1>{area}</h1>")), "{area}");
        assert!(page.contains("not built yet"), "{area}");
        assert!(
            page.contains(
                "aria-current=\"page\">{area}"
                    .replace("{area}", area)
                    .as_str()
            ),
            "{area} not marked current"
        );
    }
}

#[tokio::test]
async fn assets_carry_etags_and_hashed_urls_are_immutable() {
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let page = server.get_text("/").await;
    let href = page
        .split("href=\"")
        .find_map(|s| s.strip_prefix("/static/app.css?v="))
        .map(|s| s.split('"').next().unwrap().to_string())
        .expect("stylesheet link with a content hash");

    let hashed = server.get(&format!("/static/app.css?v={href}")).await;
    assert_eq!(hashed.status(), 200);
    assert_eq!(
        hashed.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(hashed.headers()["content-type"], "text/css");

    let plain = server.get("/static/app.css").await;
    assert_eq!(plain.headers()["cache-control"], "no-cache");
    let etag = plain.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{href}\""));
    let revalidated = crate::harness::client()
        .get(format!("{}/static/app.css", server.url))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 304);

    assert_eq!(server.get("/static/nope.js").await.status(), 404);
    assert_eq!(server.get("/static/../Cargo.toml").await.status(), 404);
}
