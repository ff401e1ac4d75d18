//! The `templates` table, and the templates every fresh database starts with.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use messages::egress::Egress;
use messages::template::{NetworkMode, Resources, Runtime, Template, TemplateDefinition};

use super::rows::TemplateRow;
use super::{Store, StoreError, now};

/// The templates every fresh database has. `python-basic` is the seed's, with the executor
/// image; it has no network, the safe default for untrusted code. `python-network` joins the
/// node's `sandbox_network` bridge (with the default egress rules: the internet, not the host or
/// private ranges). `python-gvisor` runs under gVisor, for a boundary stronger than the shared
/// kernel.
fn seed_templates(at: DateTime<Utc>) -> [Template; 3] {
    let env = BTreeMap::from([("LANG".to_owned(), "C.UTF-8".to_owned())]);
    let python = TemplateDefinition {
        id: "python-basic".into(),
        name: "Python 3".into(),
        description: "Python 3 on Debian, no network".into(),
        image_url: "sandbox-executor:v1.0".into(),
        resources: Resources::default(),
        network: NetworkMode::None,
        env,
        timeout_seconds: 300,
        warm_pool_size: 0,
        runtime: Runtime::Runc,
        egress: Egress::default(),
    };
    [
        TemplateDefinition {
            id: "python-network".into(),
            name: "Python 3 on sandbox_network".into(),
            description: "Python 3 on Debian, attached to the node's sandbox_network bridge".into(),
            network: NetworkMode::SandboxNetwork,
            ..python.clone()
        },
        TemplateDefinition {
            id: "python-gvisor".into(),
            name: "Python 3 under gVisor".into(),
            description: "Python 3 on Debian, no network, under gVisor's user-space kernel".into(),
            runtime: Runtime::Gvisor,
            ..python.clone()
        },
        python,
    ]
    .map(|definition| template_of(&definition, at))
}

impl Store {
    /// Adds the seed templates that are missing; an operator's edits to them are kept.
    pub(super) async fn seed(&self) -> Result<(), StoreError> {
        for template in seed_templates(now()) {
            self.insert_template_if_absent(&template).await?;
        }
        Ok(())
    }

    /// Adds a template unless one with its id exists; whether it was added.
    pub async fn insert_template_if_absent(&self, template: &Template) -> Result<bool, StoreError> {
        let (definition, created_at, updated_at) = (
            &template.definition,
            template.created_at,
            template.updated_at,
        );
        let added = on_writer!(self, pool => {
            let insert = sqlx::query(
                "INSERT INTO templates (id, name, description, image_url, cpu_cores, memory_mb, \
                 pids_limit, network, env, timeout_seconds, warm_pool_size, disk_mb, \
                 cpu_request_cores, memory_request_mb, runtime, egress, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                 $17, $18) \
                 ON CONFLICT (id) DO NOTHING",
            );
            bind_template_definition!(insert, definition)
                .bind(created_at)
                .bind(updated_at)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(added == 1)
    }

    pub async fn get_template(&self, id: &str) -> Result<Option<Template>, StoreError> {
        let row: Option<TemplateRow> = on_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM templates WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        row.map(Template::try_from).transpose()
    }

    pub async fn list_templates(&self) -> Result<Vec<Template>, StoreError> {
        let rows: Vec<TemplateRow> = on_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM templates ORDER BY id")
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(Template::try_from).collect()
    }

    /// Adds a template; `false` when one with its id exists.
    pub async fn create_template(
        &self,
        definition: &TemplateDefinition,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.insert_template_if_absent(&template_of(definition, at))
            .await
    }

    /// Replaces a template; `None` when there is none with its id.
    pub async fn update_template(
        &self,
        definition: &TemplateDefinition,
        at: DateTime<Utc>,
    ) -> Result<Option<Template>, StoreError> {
        let updated: Option<TemplateRow> = on_writer!(self, pool => {
            let update = sqlx::query_as(
                "UPDATE templates SET name = $2, description = $3, image_url = $4, \
                 cpu_cores = $5, memory_mb = $6, pids_limit = $7, network = $8, env = $9, \
                 timeout_seconds = $10, warm_pool_size = $11, disk_mb = $12, \
                 cpu_request_cores = $13, memory_request_mb = $14, runtime = $15, egress = $16, \
                 updated_at = $17 WHERE id = $1 \
                 RETURNING *",
            );
            bind_template_definition!(update, definition)
                .bind(at)
                .fetch_optional(pool)
                .await?
        });
        updated.map(Template::try_from).transpose()
    }

    /// Deletes a template and answers what it was; `None` when there is none.
    pub async fn delete_template(&self, id: &str) -> Result<Option<Template>, StoreError> {
        let row: Option<TemplateRow> = on_writer!(self, pool => {
            sqlx::query_as("DELETE FROM templates WHERE id = $1 RETURNING *")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        row.map(Template::try_from).transpose()
    }
}

fn template_of(definition: &TemplateDefinition, at: DateTime<Utc>) -> Template {
    Template {
        definition: definition.clone(),
        created_at: at,
        updated_at: at,
    }
}
