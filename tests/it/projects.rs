//! Projects and their members: who sees and changes what.

use crate::harness::{ADMIN, ADMIN_PASSWORD, Server, add_user, client, create_token, tempdir};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn project_roles_decide_who_sees_and_changes_a_project() {
    let dir = tempdir();
    add_user(dir.path(), ADMIN, ADMIN_PASSWORD, true);
    add_user(dir.path(), "dev", "developer password 1", false);
    let dev = create_token(dir.path(), "dev", "write");
    let server = Server::start_admin(dir.path(), &[]);
    let admin =
        |method: Method, path: &str, body: Value| server.request(method, path).json(&body).send();
    let as_dev = |method: Method, path: &str, body: Value| {
        client()
            .request(method, format!("{}{path}", server.url))
            .bearer_auth(&dev)
            .json(&body)
            .send()
    };

    let created = admin(Method::POST, "/api/v1/projects", json!({"slug": "api", "name": "Public API", "repository": "https://git.example.com/api.git"})).await.unwrap();
    assert_eq!(created.status(), 201);
    let project: Value = created.json().await.unwrap();
    assert_eq!(project["default_branch"], "main");
    assert_eq!(project["pipeline_path"], ".betcycle.yml");
    assert_eq!(
        admin(
            Method::POST,
            "/api/v1/projects",
            json!({"slug": "api", "repository": "/srv/git/api"})
        )
        .await
        .unwrap()
        .status(),
        409
    );
    let bad = admin(
        Method::POST,
        "/api/v1/projects",
        json!({"slug": "web", "repository": "not a url"}),
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(
        bad.text()
            .await
            .unwrap()
            .contains("invalid repository \\\"not a url\\\"")
    );

    // Without a role, dev sees nothing.
    let listed: Vec<Value> = as_dev(Method::GET, "/api/v1/projects", json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed.is_empty());
    assert_eq!(
        as_dev(Method::GET, "/api/v1/projects/api", json!({}))
            .await
            .unwrap()
            .status(),
        403
    );

    // A developer sees it but may not change its settings.
    assert_eq!(
        admin(
            Method::PUT,
            "/api/v1/projects/api/members/user:dev",
            json!({"role": "developer"})
        )
        .await
        .unwrap()
        .status(),
        204
    );
    let listed: Vec<Value> = as_dev(Method::GET, "/api/v1/projects", json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["role"], "developer");
    let denied = as_dev(
        Method::PATCH,
        "/api/v1/projects/api",
        json!({"default_branch": "trunk"}),
    )
    .await
    .unwrap();
    assert_eq!(denied.status(), 403);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(
        body["message"],
        "this needs the maintainer role on project \"api\""
    );

    // Maintainer through a team.
    assert_eq!(
        admin(Method::POST, "/api/v1/teams", json!({"name": "ops"}))
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        admin(Method::PUT, "/api/v1/teams/ops/members/dev", json!({}))
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        admin(
            Method::PUT,
            "/api/v1/projects/api/members/team:ops",
            json!({"role": "maintainer"})
        )
        .await
        .unwrap()
        .status(),
        204
    );
    let changed = as_dev(
        Method::PATCH,
        "/api/v1/projects/api",
        json!({"default_branch": "trunk"}),
    )
    .await
    .unwrap();
    assert_eq!(changed.status(), 200);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["default_branch"], "trunk");
    let slug_change = as_dev(
        Method::PATCH,
        "/api/v1/projects/api",
        json!({"slug": "other"}),
    )
    .await
    .unwrap();
    assert_eq!(slug_change.status(), 400);

    let members: Vec<Value> = as_dev(Method::GET, "/api/v1/projects/api/members", json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let members: Vec<(String, String)> = members
        .iter()
        .map(|m| {
            (
                m["subject"].as_str().unwrap().to_string(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(members.contains(&("user:dev".into(), "developer".into())));
    assert!(members.contains(&("team:ops".into(), "maintainer".into())));
    assert_eq!(
        as_dev(
            Method::PUT,
            "/api/v1/projects/api/members/user:nobody",
            json!({"role": "viewer"})
        )
        .await
        .unwrap()
        .status(),
        404
    );

    // The console shows the same.
    let page = server.get_text("/projects/api").await;
    assert!(page.contains("Public API") && page.contains("team:ops") && page.contains("trunk"));
    let list = server.get_text("/projects").await;
    assert!(list.contains("href=\"/projects/api\""));

    // Deleting the project removes its members; the changes are audited.
    assert_eq!(
        admin(Method::DELETE, "/api/v1/projects/api", json!({}))
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(server.get("/api/v1/projects/api").await.status(), 404);
    let audit: Vec<Value> = server
        .get("/api/v1/audit?action=project.")
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "project.create",
        "project.set_member",
        "project.update",
        "project.delete",
    ] {
        assert!(
            actions.contains(&action),
            "{action} not audited: {actions:?}"
        );
    }
}

#[tokio::test]
async fn the_project_cli_lists_creates_and_shows_through_the_api() {
    use crate::harness::{betcycle, run};
    let dir = tempdir();
    let server = Server::start_admin(dir.path(), &[]);
    let token = server.token.clone().unwrap();
    let cli = |args: &[&str]| {
        run(betcycle(dir.path())
            .arg("project")
            .args(args)
            .args(["--server", &server.url])
            .env("BETCYCLE_TOKEN", &token))
    };
    let (code, stdout, stderr) = cli(&[
        "create",
        "web",
        "--repository",
        "https://git.example.com/web.git",
        "--default-branch",
        "trunk",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("created project web ("), "{stdout}");
    let (code, stdout, _) = cli(&["list"]);
    assert_eq!(code, 0);
    let row = stdout.lines().nth(1).unwrap();
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        fields,
        [
            "web",
            "maintainer",
            "trunk",
            "https://git.example.com/web.git"
        ]
    );
    let (code, stdout, _) = cli(&["show", "web"]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["pipeline_path"], ".betcycle.yml");
    let (code, _, stderr) = cli(&["create", "web", "--repository", "/srv/web"]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "error: the server refused (409 Conflict): project \"web\" already exists\n"
    );
}
