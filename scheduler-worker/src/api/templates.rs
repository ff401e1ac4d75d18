//! Template reads, and the operators' create, replace and delete. Values are checked here, once,
//! by the contract's own rules, whoever sent the request.

use std::sync::Arc;

use messages::api::templates::{
    CreateTemplate, DeleteTemplate, GetTemplate, ListTemplates, TemplateUpdated, UpdateTemplate,
};
use messages::template::Template;
use messages::{ErrorBody, ErrorCode, subjects};
use service_kit::bus;

use super::internal;
use crate::scheduler::Scheduler;
use crate::store;

fn not_found(id: &str) -> ErrorBody {
    ErrorBody::not_found("template", &id)
}

pub(super) async fn get(
    scheduler: Arc<Scheduler>,
    request: GetTemplate,
) -> Result<Template, ErrorBody> {
    scheduler
        .store
        .get_template(&request.template_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(&request.template_id))
}

pub(super) async fn list(
    scheduler: Arc<Scheduler>,
    _request: ListTemplates,
) -> Result<Vec<Template>, ErrorBody> {
    scheduler.store.list_templates().await.map_err(internal)
}

pub(super) async fn create(
    scheduler: Arc<Scheduler>,
    request: CreateTemplate,
) -> Result<Template, ErrorBody> {
    let definition = request.definition;
    definition.check().map_err(ErrorBody::invalid)?;
    let added = scheduler
        .store
        .create_template(&definition, store::now())
        .await
        .map_err(internal)?;
    if !added {
        return Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!("template '{}' exists; change it with PUT", definition.id),
        ));
    }
    changed(&scheduler, &definition.id).await;
    scheduler
        .store
        .get_template(&definition.id)
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(&definition.id))
}

pub(super) async fn update(
    scheduler: Arc<Scheduler>,
    request: UpdateTemplate,
) -> Result<Template, ErrorBody> {
    let definition = request.definition;
    definition.check().map_err(ErrorBody::invalid)?;
    let template = scheduler
        .store
        .update_template(&definition, store::now())
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(&definition.id))?;
    changed(&scheduler, template.id()).await;
    Ok(template)
}

pub(super) async fn delete(
    scheduler: Arc<Scheduler>,
    request: DeleteTemplate,
) -> Result<Template, ErrorBody> {
    let template = scheduler
        .store
        .delete_template(&request.template_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(&request.template_id))?;
    changed(&scheduler, template.id()).await;
    Ok(template)
}

/// Forgets this replica's copy of the template and tells the node daemons, so their warm pools
/// follow at once. Losing the message only delays that until their next periodic read.
async fn changed(scheduler: &Scheduler, template_id: &str) {
    scheduler.forget_template(template_id);
    let update = TemplateUpdated {
        template_id: template_id.to_owned(),
    };
    if let Err(error) = bus::publish(&scheduler.nats, subjects::templates_updated(), &update).await
    {
        tracing::warn!(template_id, %error, "could not announce a template change");
    }
}
