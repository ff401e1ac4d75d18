//! `/api/v1/templates`: reads answered by the scheduler replicas.

use axum::Json;
use axum::extract::State;
use messages::api::{GetTemplate, ListTemplates};
use messages::session::Template;
use serde::Serialize;
use service_kit::bus;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::ApiPath;

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
