//! Secrets as clients see them (names and versions, never a value), and the scope a
//! request names.

use super::{Scope, Secret};
use crate::core::error::{Error, Result};
use crate::store::Store;
use jiff::Timestamp;
use serde::Serialize;

/// The scope a path names.
pub async fn scope_of(
    store: &Store,
    slug: Option<&str>,
    environment: Option<&str>,
) -> Result<Scope> {
    let Some(slug) = slug else {
        return Ok(Scope::Instance);
    };
    let project = crate::projects::find(store, slug).await?.id;
    Ok(match environment {
        None => Scope::Project { project },
        Some(environment) => {
            crate::ci::pipeline::deploy::check_environment_name(environment)
                .map_err(Error::Invalid)?;
            Scope::Environment {
                project,
                environment: environment.to_string(),
            }
        }
    })
}

#[derive(Serialize)]
pub struct VersionView {
    pub version: u64,
    pub created_by: String,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<u64>,
}

/// A secret as clients see it: no value, ever.
#[derive(Serialize)]
pub struct SecretView {
    pub name: String,
    /// `instance`, `project` or `environment`.
    pub scope: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The current version.
    pub version: u64,
    pub updated_by: String,
    pub updated_at: Timestamp,
    /// The kept versions, newest first.
    pub versions: Vec<VersionView>,
}

impl From<Secret> for SecretView {
    fn from(secret: Secret) -> Self {
        let current = secret.current();
        let (scope, environment) = match &secret.scope {
            Scope::Instance => ("instance", None),
            Scope::Project { .. } => ("project", None),
            Scope::Environment { environment, .. } => ("environment", Some(environment.clone())),
        };
        Self {
            scope,
            environment,
            version: current.version,
            updated_by: current.created_by.clone(),
            updated_at: current.created_at,
            versions: secret
                .versions
                .iter()
                .rev()
                .map(|v| VersionView {
                    version: v.version,
                    created_by: v.created_by.clone(),
                    created_at: v.created_at,
                    restored_from: v.restored_from,
                })
                .collect(),
            name: secret.name,
        }
    }
}
