//! Reads and the operators' changes of templates, and the news of a change.

use serde::{Deserialize, Serialize};

use crate::template::{Template, TemplateDefinition};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetTemplate {
    pub template_id: String,
}
api_request!(GetTemplate => "templates.get", Template);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListTemplates {}
api_request!(ListTemplates => "templates.list", Vec<Template>);

/// Create a template; an existing id is a conflict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateTemplate {
    pub definition: TemplateDefinition,
}
api_request!(CreateTemplate => "templates.create", Template);

/// Replace an existing template. Sessions made from it keep what they were made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateTemplate {
    pub definition: TemplateDefinition,
}
api_request!(UpdateTemplate => "templates.update", Template);

/// Delete a template; answers the deleted template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteTemplate {
    pub template_id: String,
}
api_request!(DeleteTemplate => "templates.delete", Template);

/// On [`crate::subjects::templates_updated`]: a template was created, changed or deleted. Node
/// daemons read the templates again at once, so a warm pool fills (or shrinks) within moments
/// rather than at their next periodic read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateUpdated {
    pub template_id: String,
}
