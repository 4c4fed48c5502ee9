//! `GET /api/v1/backup` (administrators): a backup archive of the running server, made
//! while it keeps taking writes (see `crate::core::backup`). Never carries the master key.

use crate::app::App;
use crate::core::backup::{self, KeyInBackup};
use crate::core::error::Error;
use crate::http::ServerResult;
use crate::http::auth::Signed;
use crate::http::routes::{Route, routes};
use crate::identity::audit::Record;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

pub async fn download(State(app): State<App>, signed: Signed) -> ServerResult<impl IntoResponse> {
    let data_dir = app.config.data_dir.clone();
    let path = data_dir.join(format!(
        ".backup-download-{}.tar.gz",
        uuid::Uuid::new_v4().simple()
    ));
    let key = KeyInBackup {
        id: Some(app.secrets.master_key_id()),
        file: None,
    };
    let made = backup::create(&app.store, &data_dir, key, &path).await;
    // Once open, the file can go: the stream reads it through the descriptor.
    let opened = tokio::fs::File::open(&path).await;
    let _ = tokio::fs::remove_file(&path).await;
    let manifest = made?;
    let file = opened.map_err(Error::io(format!("cannot read {}", path.display())))?;
    let size = file
        .metadata()
        .await
        .map_err(Error::io(format!("cannot read {}", path.display())))?
        .len();
    app.store
        .audit(
            Record::new(&signed.audit, "backup.download", "instance").detail(format!(
                "{} records, {} files, {size} bytes",
                manifest.records, manifest.files
            )),
        )
        .await?;
    let name = format!(
        "betcycle-backup-{}.tar.gz",
        manifest.created_at.strftime("%Y%m%dT%H%M%SZ")
    );
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        body,
    ))
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/api/v1/backup" ADMIN => download,
    ]
}
