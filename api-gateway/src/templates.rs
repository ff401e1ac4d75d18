//! `/api/v1/templates`: reads, and the operators' create, replace and delete, all answered by
//! the scheduler replicas (which check the values).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use messages::api::templates::{
    CreateTemplate, DeleteTemplate, GetTemplate, ListTemplates, UpdateTemplate,
};
use messages::egress::Egress;
use messages::template::{
    DEFAULT_DISK_MB, NetworkMode, Resources, Runtime, Template, TemplateDefinition,
};
use serde::{Deserialize, Serialize};
use service_kit::bus;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::input::unprocessable;
use crate::state::AppState;

/// The body of `GET /api/v1/templates`.
#[derive(Debug, Serialize)]
pub(crate) struct TemplateList {
    templates: Vec<Template>,
}

/// `GET /api/v1/templates`.
#[tracing::instrument(name = "gateway.list_templates", skip_all)]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<TemplateList>, ApiError> {
    let templates = bus::api_request(&state.nats, &ListTemplates {}, state.request_timeout).await?;
    Ok(Json(TemplateList { templates }))
}

/// `GET /api/v1/templates/{id}`.
#[tracing::instrument(name = "gateway.get_template", skip_all, fields(template_id = %id))]
pub(crate) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Template>, ApiError> {
    let request = GetTemplate {
        template_id: id.clone(),
    };
    let answer = bus::api_request(&state.nats, &request, state.request_timeout).await;
    Ok(Json(ApiError::found("template", &id, answer)?))
}

fn default_cpu() -> f64 {
    1.0
}
fn default_memory() -> u64 {
    512
}
fn default_pids() -> u32 {
    256
}
fn default_timeout() -> u64 {
    300
}

/// The body of `POST /api/v1/templates` and `PUT /api/v1/templates/{id}`. Short names, with
/// the names a template reads back with accepted too.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TemplateBody {
    /// Required on create; on replace it may be left out, or must match the path.
    #[serde(default)]
    id: Option<String>,
    /// Defaults to the id.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(alias = "image_url")]
    image: String,
    #[serde(default = "default_cpu", alias = "cpu_cores")]
    cpu: f64,
    /// MiB.
    #[serde(default = "default_memory", alias = "memory_mb")]
    memory: u64,
    #[serde(default = "default_pids", alias = "pids_limit")]
    pids: u32,
    /// Seconds a session lives unless kept alive.
    #[serde(default = "default_timeout", alias = "timeout_seconds")]
    timeout: u64,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    network: NetworkMode,
    /// Containers each node keeps warm for this template (0: none).
    #[serde(default)]
    warm_pool_size: u32,
    /// MiB a sandbox may write in all (`/workspace` and `/tmp`).
    #[serde(default = "default_disk", alias = "disk")]
    disk_mb: u64,
    /// The CPU a sandbox is guaranteed (placement counts it); default a share of `cpu`.
    #[serde(default, alias = "cpu_request_cores")]
    cpu_request: Option<f64>,
    /// The memory a sandbox is guaranteed, MiB; default a share of `memory`.
    #[serde(default, alias = "memory_request_mb")]
    memory_request: Option<u64>,
    #[serde(default)]
    runtime: Runtime,
    /// Where a networked sandbox may connect: `{"allow": [...], "deny": [...]}`.
    #[serde(default)]
    egress: Egress,
}

fn default_disk() -> u64 {
    DEFAULT_DISK_MB
}

impl TemplateBody {
    /// The definition the body describes, checked by the contract's rules (422 when not).
    fn into_definition(self, id: String) -> Result<TemplateDefinition, ApiError> {
        let definition = TemplateDefinition {
            name: self.name.unwrap_or_else(|| id.clone()),
            id,
            description: self.description,
            image_url: self.image,
            resources: Resources {
                cpu_cores: self.cpu,
                memory_mb: self.memory,
                pids_limit: self.pids,
                disk_mb: self.disk_mb,
                cpu_request_cores: self.cpu_request,
                memory_request_mb: self.memory_request,
            },
            network: self.network,
            env: self.env,
            timeout_seconds: self.timeout,
            warm_pool_size: self.warm_pool_size,
            runtime: self.runtime,
            egress: self.egress,
        };
        definition.check().map_err(unprocessable)?;
        Ok(definition)
    }
}

/// `POST /api/v1/templates`: 201 with the template, 409 if the id is taken.
#[tracing::instrument(name = "gateway.create_template", skip_all)]
pub(crate) async fn create(
    State(state): State<AppState>,
    ApiJson(mut body): ApiJson<TemplateBody>,
) -> Result<Response, ApiError> {
    let Some(id) = body.id.take() else {
        return Err(ApiError::invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "id is required",
        ));
    };
    let request = CreateTemplate {
        definition: body.into_definition(id)?,
    };
    let template = bus::api_request(&state.nats, &request, state.request_timeout).await?;
    state.templates.forget(template.id());
    let location = format!("/api/v1/templates/{}", template.id());
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(template),
    )
        .into_response())
}

/// `PUT /api/v1/templates/{id}`: replaces the template; sessions made from it keep theirs.
#[tracing::instrument(name = "gateway.update_template", skip_all, fields(template_id = %id))]
pub(crate) async fn update(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(mut body): ApiJson<TemplateBody>,
) -> Result<Json<Template>, ApiError> {
    if let Some(body_id) = body.id.take()
        && body_id != id
    {
        return Err(ApiError::invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the body's id {body_id:?} differs from the path's {id:?}"),
        ));
    }
    let request = UpdateTemplate {
        definition: body.into_definition(id.clone())?,
    };
    let answer = bus::api_request(&state.nats, &request, state.request_timeout).await;
    state.templates.forget(&id);
    Ok(Json(ApiError::found("template", &id, answer)?))
}

/// `DELETE /api/v1/templates/{id}`: answers the deleted template.
#[tracing::instrument(name = "gateway.delete_template", skip_all, fields(template_id = %id))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Template>, ApiError> {
    let request = DeleteTemplate {
        template_id: id.clone(),
    };
    let answer = bus::api_request(&state.nats, &request, state.request_timeout).await;
    state.templates.forget(&id);
    Ok(Json(ApiError::found("template", &id, answer)?))
}
