//! `/plugins`: list, load, reload, reorder and remove plugins while clients stay connected.
//! Every change swaps the whole chain at once; one that fails leaves the running chain as
//! it was and answers with the reason.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, Error};
use crate::plugins::{PluginError, PluginSpec};

impl From<PluginError> for Error {
    fn from(error: PluginError) -> Self {
        let status = match error {
            PluginError::NotLoaded(_) => StatusCode::NOT_FOUND,
            PluginError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PluginError::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Error::new(status, error.to_string())
    }
}

/// The chain in order: name, version, hooks, source, failure policy, calls, faults, state.
pub(super) async fn list(State(admin): State<Admin>) -> Json<Value> {
    let plugins: Vec<Value> = admin
        .shared
        .node
        .plugins
        .describe()
        .into_iter()
        .enumerate()
        .map(|(position, status)| {
            let mut entry = json!(status);
            entry["position"] = json!(position);
            entry["state"] = json!(if status.disabled {
                "disabled"
            } else {
                "active"
            });
            entry
        })
        .collect();
    Json(json!({ "plugins": plugins }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Position {
    /// Where in the chain (0: first); default last.
    position: Option<usize>,
}

/// Loads a plugin (the body is a `[[plugins]]` entry as JSON) at `?position=N`.
pub(super) async fn load(
    State(admin): State<Admin>,
    Query(Position { position }): Query<Position>,
    Json(spec): Json<PluginSpec>,
) -> Result<(StatusCode, Json<Value>), Error> {
    let loaded = admin.shared.node.plugins.insert(&spec, position).await?;
    tracing::info!(plugin = %loaded.name, version = %loaded.version, source = %spec.source, "plugin loaded on the admin API");
    Ok((StatusCode::CREATED, Json(json!(loaded))))
}

/// Loads a plugin again from its source, with fresh instances and counters.
pub(super) async fn reload(
    State(admin): State<Admin>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Error> {
    let loaded = admin.shared.node.plugins.reload(&name).await?;
    tracing::info!(plugin = %loaded.name, version = %loaded.version, "plugin reloaded on the admin API");
    Ok(Json(json!(loaded)))
}

pub(super) async fn remove(
    State(admin): State<Admin>,
    Path(name): Path<String>,
) -> Result<StatusCode, Error> {
    admin.shared.node.plugins.remove(&name).await?;
    tracing::info!(plugin = %name, "plugin removed on the admin API");
    Ok(StatusCode::NO_CONTENT)
}

/// Puts the chain in the given order (a JSON array naming every loaded plugin once).
pub(super) async fn reorder(
    State(admin): State<Admin>,
    Json(names): Json<Vec<String>>,
) -> Result<Json<Value>, Error> {
    admin.shared.node.plugins.reorder(&names).await?;
    tracing::info!(order = ?names, "plugins reordered on the admin API");
    Ok(list(State(admin)).await)
}
