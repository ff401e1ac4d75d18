//! The SQL that several files of the store share, as macros (the columns of a session row, the
//! insert of a session, the guarded transition, the list filter): each is spelled once, and one
//! place is edited when a session column is added. Declared first in `mod.rs`, so every file of
//! the store may use them.

/// The columns of a session row, spelled once for every query that reads sessions.
macro_rules! session_columns {
    () => {
        "id, template_id, status, runtime_node, container_id, image, cpu_cores, memory_mb, \
         pids_limit, network, env, failure_code, failure_reason, created_at, updated_at, \
         started_at, ended_at, timeout_seconds, expires_at, disk_mb, cpu_request_cores, \
         memory_request_mb, runtime, egress"
    };
}

/// The insert of a new session (unless one with its id exists), bound to its values; for
/// either backend.
macro_rules! insert_session_query {
    ($session:expr, $env:expr, $egress:expr) => {{
        let (session, env, egress): (
            &messages::session::Session,
            &std::collections::BTreeMap<String, String>,
            &messages::egress::Egress,
        ) = ($session, $env, $egress);
        sqlx::query(
            "INSERT INTO sessions (id, template_id, status, runtime_node, container_id, image, \
             cpu_cores, memory_mb, pids_limit, network, env, failure_code, failure_reason, \
             created_at, updated_at, started_at, ended_at, timeout_seconds, expires_at, disk_mb, \
             cpu_request_cores, memory_request_mb, runtime, egress) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19, $20, $21, $22, $23, $24) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(session.id.as_str())
        .bind(&session.template_id)
        .bind(session.status.as_str())
        .bind(session.runtime_node.as_ref().map(messages::NodeId::as_str))
        .bind(session.container_id.as_deref())
        .bind(&session.image)
        .bind(session.resources.cpu_cores)
        .bind($crate::store::rows::to_i64(session.resources.memory_mb))
        .bind(i64::from(session.resources.pids_limit))
        .bind(session.network.as_str())
        .bind($crate::store::rows::to_json(env))
        .bind(session.failure_code.map(messages::ErrorCode::as_str))
        .bind(session.failure_reason.as_deref())
        .bind(session.created_at)
        .bind(session.updated_at)
        .bind(session.started_at)
        .bind(session.ended_at)
        .bind($crate::store::rows::to_i64(session.timeout_seconds))
        .bind(session.expires_at)
        .bind($crate::store::rows::to_i64(session.resources.disk_mb))
        .bind(session.resources.cpu_request_cores)
        .bind(
            session
                .resources
                .memory_request_mb
                .map($crate::store::rows::to_i64),
        )
        .bind(session.runtime.as_str())
        .bind($crate::store::rows::to_json(egress))
    }};
}

/// A guarded session transition (the `UPDATE` of [`super::Store::transition`]) bound to its
/// values; for either backend.
macro_rules! transition_query {
    ($sql:expr, $id:expr, $change:expr, $at:expr) => {{
        let (id, change): (&messages::SessionId, &$crate::store::Transition) = ($id, $change);
        sqlx::query_as(sqlx::AssertSqlSafe($sql))
            .bind(id.as_str())
            .bind(change.status.as_str())
            .bind(change.runtime_node.as_ref().map(messages::NodeId::as_str))
            .bind(change.container_id.as_deref())
            .bind(change.failure_code.map(messages::ErrorCode::as_str))
            .bind(change.failure_reason.as_deref())
            .bind($at)
    }};
}

/// A template definition's values bound as `$1` (id) to `$16` (egress), in the column
/// order of `INSERT INTO templates`; the caller binds the times after them.
macro_rules! bind_template_definition {
    ($query:expr, $definition:expr) => {{
        let definition: &messages::template::TemplateDefinition = $definition;
        $query
            .bind(&definition.id)
            .bind(&definition.name)
            .bind(&definition.description)
            .bind(&definition.image_url)
            .bind(definition.resources.cpu_cores)
            .bind($crate::store::rows::to_i64(definition.resources.memory_mb))
            .bind(i64::from(definition.resources.pids_limit))
            .bind(definition.network.as_str())
            .bind($crate::store::rows::to_json(&definition.env))
            .bind($crate::store::rows::to_i64(definition.timeout_seconds))
            .bind(i64::from(definition.warm_pool_size))
            .bind($crate::store::rows::to_i64(definition.resources.disk_mb))
            .bind(definition.resources.cpu_request_cores)
            .bind(
                definition
                    .resources
                    .memory_request_mb
                    .map($crate::store::rows::to_i64),
            )
            .bind(definition.runtime.as_str())
            .bind($crate::store::rows::to_json(&definition.egress))
    }};
}

/// The filter of [`super::Store::list_sessions`], spelled once for the page and the count.
macro_rules! session_filter {
    () => {
        "($1 IS NULL OR status = $1) AND ($2 IS NULL OR template_id = $2)"
    };
}

/// Runs the same read on whichever backend the store has.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite { readers: $pool, .. } => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}

/// Runs the same write (or a transaction) on whichever backend the store has.
macro_rules! on_writer {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite { writer: $pool, .. } => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}
