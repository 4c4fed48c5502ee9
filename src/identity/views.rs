//! Identity records as the API and the console show them.

use super::Team;
use crate::core::error::Result;
use crate::store::Store;
use serde::Serialize;

#[derive(Serialize)]
pub struct TeamView {
    pub id: u64,
    pub name: String,
    pub members: Vec<String>,
}

/// Every team with its members' names.
pub async fn team_views(store: &Store) -> Result<Vec<TeamView>> {
    let users = store.list_users().await?;
    let teams = store.list_teams().await?;
    Ok(teams
        .into_iter()
        .map(|t: Team| TeamView {
            members: users
                .iter()
                .filter(|u| t.members.contains(&u.id))
                .map(|u| u.name.clone())
                .collect(),
            id: t.id,
            name: t.name,
        })
        .collect())
}
