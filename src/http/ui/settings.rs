//! The settings screens. `/settings/backup`: what a backup holds, a button that downloads
//! one from the running server (`GET /api/v1/backup`), and how to restore it.

use super::{Console, Layout, render};
use crate::http::ServerResult;
use crate::http::routes::{Route, routes};
use askama::Template;
use axum::response::Html;

#[derive(Template)]
#[template(path = "core/backup.html")]
struct BackupPage {
    layout: Layout,
    data_dir: String,
    store_size: String,
    master_key_id: String,
    master_key_file: String,
}

pub async fn backup_page(Console { app, signed }: Console) -> ServerResult<Html<String>> {
    render(&BackupPage {
        layout: Layout::new("Backups", "settings", Some(&signed.principal)),
        data_dir: app.config.data_dir.display().to_string(),
        store_size: bytesize::ByteSize(app.store.file_size()).to_string(),
        master_key_id: app.secrets.master_key_id(),
        master_key_file: app.config.master_key_file.display().to_string(),
    })
}

/// The routes this file answers, with who may call them (see `http::routes`).
pub fn routes() -> Vec<Route> {
    use crate::http::routes::need::*;
    routes![
        GET "/settings/backup" ADMIN => backup_page,
    ]
}
