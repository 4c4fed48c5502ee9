//! Projects and their members: who sees and changes what.

use crate::harness::{ADMIN, ADMIN_PASSWORD, Server, add_user, create_token, tempdir};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn project_roles_decide_who_sees_and_changes_a_project() {
    let dir = tempdir();
    add_user(dir.path(), ADMIN, ADMIN_PASSWORD, true);
    add_user(dir.path(), "dev", "developer password 1", false);
    let dev = create_token(dir.path(), "dev", "write");
    let server = Server::start_admin(dir.path(), &[]);
    let dev = server.as_token(&dev);
    let empty = json!({});

    let project = server.expect(Method::POST, "/api/v1/projects", &json!({"slug": "api", "name": "Public API", "repository": "https://git.example.com/api.git"}), 201).await;
    assert_eq!(project["default_branch"], "main");
    assert_eq!(project["pipeline_path"], ".betcycle.yml");
    let again = json!({"slug": "api", "repository": "/srv/git/api"});
    server
        .expect(Method::POST, "/api/v1/projects", &again, 409)
        .await;
    let bad = json!({"slug": "web", "repository": "not a url"});
    let (status, body) = server
        .send_json(Method::POST, "/api/v1/projects", bad)
        .await;
    assert_eq!(status, 400);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("invalid repository \"not a url\""),
        "{message}"
    );

    // Without a role, dev sees nothing.
    let listed = dev
        .expect(Method::GET, "/api/v1/projects", &empty, 200)
        .await;
    assert_eq!(listed, json!([]));
    dev.expect(Method::GET, "/api/v1/projects/api", &empty, 403)
        .await;

    // A developer sees it but may not change its settings.
    server.grant("api", "user:dev", "developer").await;
    let listed = dev
        .expect(Method::GET, "/api/v1/projects", &empty, 200)
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["role"], "developer");
    let trunk = json!({"default_branch": "trunk"});
    let body = dev
        .expect(Method::PATCH, "/api/v1/projects/api", &trunk, 403)
        .await;
    assert_eq!(
        body["message"],
        "this needs the maintainer role on project \"api\""
    );

    // Maintainer through a team.
    server
        .expect(Method::POST, "/api/v1/teams", &json!({"name": "ops"}), 201)
        .await;
    server
        .expect(Method::PUT, "/api/v1/teams/ops/members/dev", &empty, 204)
        .await;
    server.grant("api", "team:ops", "maintainer").await;
    let changed = dev
        .expect(Method::PATCH, "/api/v1/projects/api", &trunk, 200)
        .await;
    assert_eq!(changed["default_branch"], "trunk");
    let slug = json!({"slug": "other"});
    dev.expect(Method::PATCH, "/api/v1/projects/api", &slug, 400)
        .await;

    let members = dev
        .expect(Method::GET, "/api/v1/projects/api/members", &empty, 200)
        .await;
    let members: Vec<(&str, &str)> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["subject"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert!(members.contains(&("user:dev", "developer")));
    assert!(members.contains(&("team:ops", "maintainer")));
    let viewer = json!({"role": "viewer"});
    let nobody = "/api/v1/projects/api/members/user:nobody";
    dev.expect(Method::PUT, nobody, &viewer, 404).await;

    // The console shows the same.
    let page = server.get_text("/projects/api").await;
    assert!(page.contains("Public API") && page.contains("trunk"));
    let page = server.get_text("/projects/api/settings").await;
    assert!(page.contains("Public API") && page.contains("team:ops") && page.contains("trunk"));
    let list = server.get_text("/projects").await;
    assert!(list.contains("href=\"/projects/api\""));

    // Deleting the project removes its members; the changes are audited.
    server
        .expect(Method::DELETE, "/api/v1/projects/api", &empty, 204)
        .await;
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

/// The console reads a new project's repository before creating it: an address that
/// leads nowhere or a branch it does not have is refused on the page, in the frame, and
/// nothing is created.
#[tokio::test]
async fn the_console_checks_a_new_projects_repository_before_creating_it() {
    let dir = tempdir();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    crate::run::git_repo(&repo, "steps:\n  - { name: a, run: 'true' }\n");
    let server = Server::start_admin(dir.path(), &[]);
    let create = |repository: String, branch: &'static str| {
        server
            .request(Method::POST, "/projects")
            .form(&[
                ("slug", "demo".to_string()),
                ("repository", repository),
                ("default_branch", branch.to_string()),
            ])
            .send()
    };
    let nowhere = dir.path().join("nowhere").display().to_string();
    let refused = create(nowhere.clone(), "main").await.unwrap();
    assert_eq!(refused.status(), 400);
    let page = refused.text().await.unwrap();
    assert!(page.contains("cannot read the repository"), "{page}");
    assert!(
        page.contains("aria-label=\"Main\""),
        "not in the page frame"
    );
    let refused = create(repo.display().to_string(), "trunk").await.unwrap();
    assert_eq!(refused.status(), 400);
    let page = refused.text().await.unwrap();
    assert!(
        page.contains("no branch &#34;trunk&#34;; it has main"),
        "{page}"
    );
    let projects = server.get_json("/api/v1/projects").await;
    assert_eq!(projects.as_array().unwrap().len(), 0, "{projects}");
    // Accepted: the form's redirect leads to the new project's page.
    let created = create(repo.display().to_string(), "main").await.unwrap();
    assert_eq!(created.status(), 200);
    assert!(
        created
            .url()
            .as_str()
            .ends_with("/projects/demo?done=project-created"),
        "{}",
        created.url()
    );
    // A run of a ref the repository does not have: the project page, in its frame, says
    // so.
    let refused = server
        .request(Method::POST, "/projects/demo/runs")
        .form(&[("ref", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let page = refused.text().await.unwrap();
    assert!(
        page.contains("no branch, tag or ref &#34;nope&#34;"),
        "{page}"
    );
    assert!(page.contains("aria-label=\"Main\"") && page.contains("aria-label=\"Project\""));
    // The Settings tab: a change lands back on it with its notice; a bad one is refused
    // there, in the frame.
    let saved = server
        .request(Method::POST, "/projects/demo/settings")
        .form(&[("name", "Demo app")])
        .send()
        .await
        .unwrap();
    assert!(
        saved
            .url()
            .as_str()
            .ends_with("/projects/demo/settings?done=project-updated")
    );
    let page = saved.text().await.unwrap();
    assert!(page.contains("Project settings saved.") && page.contains("value=\"Demo app\""));
    let refused = server
        .request(Method::POST, "/projects/demo/settings")
        .form(&[("repository", "not a url")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let page = refused.text().await.unwrap();
    assert!(
        page.contains("invalid repository") && page.contains("<h1>Settings</h1>"),
        "{page}"
    );
}
