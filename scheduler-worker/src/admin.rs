//! The operators' changes the gateway forwards: node declarations and drain, templates, and a
//! session's timeout. Input is checked here, once, whoever sent the request.

use std::time::Instant;

use messages::api::NodeInfo;
use messages::control::{
    CreateTemplate, DeclareNode, DeleteTemplate, MAX_WARM_POOL_SIZE, SetNodeDrain,
    SetSessionTimeout, TemplateDefinition, TemplateUpdated, UpdateTemplate, check_capacity,
};
use messages::node::{DiscoverNodes, NodeUpdated};
use messages::session::{Session, Template, check_timeout, is_env_name, is_image_reference};
use messages::{ErrorBody, ErrorCode, NodeId, subjects};
use service_kit::bus;

use crate::scheduler::Scheduler;
use crate::store::{self, StoreError};

const MAX_NAME_CHARS: usize = 200;
const MAX_ID_CHARS: usize = 128;
const MAX_ENV_ENTRIES: usize = 64;

fn invalid(message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorCode::InvalidRequest, message)
}

fn internal(error: StoreError) -> ErrorBody {
    tracing::error!(%error, "database error while answering a request");
    ErrorBody::new(
        ErrorCode::Internal,
        "the scheduler's database failed; see its log",
    )
}

fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), ErrorBody> {
    let chars = value.chars().count();
    if value.trim().is_empty() || chars > max_chars {
        return Err(invalid(format!(
            "{field} must have 1 to {max_chars} characters"
        )));
    }
    Ok(())
}

fn check_template(definition: &TemplateDefinition) -> Result<(), ErrorBody> {
    let id = &definition.id;
    if id.is_empty()
        || id.len() > MAX_ID_CHARS
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(format!(
            "template id {id:?} must have 1 to {MAX_ID_CHARS} of A-Z a-z 0-9 - _ ."
        )));
    }
    check_text("name", &definition.name, MAX_NAME_CHARS)?;
    if !is_image_reference(&definition.image_url) {
        return Err(invalid(format!(
            "image {:?} is not an image reference such as sandbox-executor:v1.0",
            definition.image_url
        )));
    }
    let resources = &definition.resources;
    check_capacity("the template's", resources.cpu_cores, resources.memory_mb).map_err(invalid)?;
    if resources.pids_limit == 0 {
        return Err(invalid("pids must be more than 0"));
    }
    check_timeout(definition.timeout_seconds).map_err(invalid)?;
    if definition.warm_pool_size > MAX_WARM_POOL_SIZE {
        return Err(invalid(format!(
            "warm_pool_size may be at most {MAX_WARM_POOL_SIZE} containers per node"
        )));
    }
    if definition.env.len() > MAX_ENV_ENTRIES {
        return Err(invalid(format!(
            "env may have at most {MAX_ENV_ENTRIES} entries"
        )));
    }
    if let Some(name) = definition.env.keys().find(|name| !is_env_name(name)) {
        return Err(invalid(format!(
            "env name {name:?} is not valid: use [A-Za-z_][A-Za-z0-9_]*"
        )));
    }
    Ok(())
}

fn template_not_found(id: &str) -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, format!("template '{id}' not found"))
}

fn node_not_found(id: &NodeId) -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, format!("node '{id}' not found"))
}

impl Scheduler {
    pub(crate) async fn api_declare_node(
        &self,
        request: DeclareNode,
    ) -> Result<NodeInfo, ErrorBody> {
        let declaration = request.declaration;
        declaration.check().map_err(invalid)?;
        self.store
            .declare_node(&declaration, store::now())
            .await
            .map_err(internal)?;
        let node_info = self.node_changed(&declaration.node_id).await?;
        // A daemon refused before it was declared joins now, not at its next retry.
        let discover = DiscoverNodes {
            node_id: Some(declaration.node_id.clone()),
        };
        if let Err(error) = bus::publish(&self.nats, subjects::nodes_discover(), &discover).await {
            tracing::warn!(node = %declaration.node_id, %error, "could not ask a declared node to register");
        }
        tracing::info!(node = %declaration.node_id, "node declared");
        Ok(node_info)
    }

    pub(crate) async fn api_set_node_drain(
        &self,
        request: SetNodeDrain,
    ) -> Result<NodeInfo, ErrorBody> {
        let found = self
            .store
            .set_node_drained(&request.node_id, request.drained)
            .await
            .map_err(internal)?;
        if !found {
            return Err(node_not_found(&request.node_id));
        }
        tracing::info!(node = %request.node_id, drained = request.drained, "node drain changed");
        self.node_changed(&request.node_id).await
    }

    /// Applies the node's record to this replica's view at once, tells the other replicas, and
    /// answers the node as the view now shows it.
    async fn node_changed(&self, node_id: &NodeId) -> Result<NodeInfo, ErrorBody> {
        let record = self
            .store
            .get_node(node_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| node_not_found(node_id))?;
        self.fleet().apply_record(record, Instant::now());
        let update = NodeUpdated {
            node_id: node_id.clone(),
        };
        if let Err(error) = bus::publish(&self.nats, subjects::nodes_updated(), &update).await {
            tracing::warn!(node = %node_id, %error, "could not tell the other replicas of a node change");
        }
        self.fleet()
            .info(node_id, Instant::now())
            .ok_or_else(|| node_not_found(node_id))
    }

    pub(crate) async fn api_create_template(
        &self,
        request: CreateTemplate,
    ) -> Result<Template, ErrorBody> {
        let definition = request.definition;
        check_template(&definition)?;
        let added = self
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
        self.template_changed(&definition.id).await;
        self.read_template(&definition.id).await
    }

    pub(crate) async fn api_update_template(
        &self,
        request: UpdateTemplate,
    ) -> Result<Template, ErrorBody> {
        let definition = request.definition;
        check_template(&definition)?;
        let template = self
            .store
            .update_template(&definition, store::now())
            .await
            .map_err(internal)?
            .ok_or_else(|| template_not_found(&definition.id))?;
        self.template_changed(&template.id).await;
        Ok(template)
    }

    pub(crate) async fn api_delete_template(
        &self,
        request: DeleteTemplate,
    ) -> Result<Template, ErrorBody> {
        let template = self
            .store
            .delete_template(&request.template_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| template_not_found(&request.template_id))?;
        self.template_changed(&template.id).await;
        Ok(template)
    }

    /// Tells the node daemons a template changed, so their warm pools follow at once. Losing
    /// this message only delays that until their next periodic read.
    async fn template_changed(&self, template_id: &str) {
        self.forget_template(template_id);
        let update = TemplateUpdated {
            template_id: template_id.to_owned(),
        };
        if let Err(error) = bus::publish(&self.nats, subjects::templates_updated(), &update).await {
            tracing::warn!(template_id, %error, "could not announce a template change");
        }
    }

    async fn read_template(&self, id: &str) -> Result<Template, ErrorBody> {
        self.store
            .get_template(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| template_not_found(id))
    }

    /// Keep-alive: the session now ends `timeout_seconds` from now. An ended session cannot be
    /// kept alive.
    pub(crate) async fn api_set_session_timeout(
        &self,
        request: SetSessionTimeout,
    ) -> Result<Session, ErrorBody> {
        check_timeout(request.timeout_seconds).map_err(invalid)?;
        let id = &request.session_id;
        let (session, changed) = self
            .store
            .set_session_timeout(id, request.timeout_seconds, store::now())
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                ErrorBody::new(ErrorCode::NotFound, format!("session '{id}' not found"))
            })?;
        if !changed {
            return Err(ErrorBody::new(
                ErrorCode::Conflict,
                format!(
                    "session '{id}' is {} and cannot be kept alive",
                    session.status
                ),
            ));
        }
        Ok(session)
    }
}
