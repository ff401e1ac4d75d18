//! The `sessions` table: a session is inserted once per request and then only moved by guarded
//! transitions (the state machine that decides them is `crate::lifecycle`); the queries the
//! lifetime sweeps and the reconciliation run.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use messages::api::sessions::ListSessions;
use messages::egress::Egress;
use messages::session::{Session, SessionStatus};
use messages::template::ContainerSpec;
use messages::{ErrorCode, NodeId, SessionId};

use super::rows::{self, SessionRow};
use super::{Pool, Store, StoreError, batch, now};

/// A change of a session's state, as [`Store::transition`] writes it: the new status, and the
/// fields it sets (a `None` leaves the field as it is).
#[derive(Debug, Clone)]
pub struct Transition {
    pub status: SessionStatus,
    pub runtime_node: Option<NodeId>,
    pub container_id: Option<String>,
    pub failure_code: Option<ErrorCode>,
    pub failure_reason: Option<String>,
}

impl Transition {
    /// The plain change to `status`, setting nothing else; changes that set more build on it.
    pub fn to(status: SessionStatus) -> Self {
        Self {
            status,
            runtime_node: None,
            container_id: None,
            failure_code: None,
            failure_reason: None,
        }
    }
}

/// What a guarded transition did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The session was in one of the statuses the change may start from: it is as shown now.
    Changed(Session),
    /// It was in another status: nothing was written; it is as shown.
    Unchanged(Session),
    /// There is no such session.
    Missing,
}

/// The most ids one query of [`Store::get_sessions`] binds (SQLite takes 32,766 parameters,
/// PostgreSQL 65,535).
const IDS_PER_QUERY: usize = 500;

/// `'a', 'b'` for an `IN (...)` list. The statuses come from the enum, never from input.
fn status_list(statuses: &[SessionStatus]) -> String {
    statuses
        .iter()
        .map(|status| format!("'{}'", status.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The statuses of a session that has not ended.
fn live_statuses() -> String {
    let live: Vec<SessionStatus> = SessionStatus::ALL
        .into_iter()
        .filter(|status| !status.is_final())
        .collect();
    status_list(&live)
}

impl Store {
    /// Records a new session with the environment its container is made with (kept out of
    /// [`Session`], which the API shows, because it may hold secrets) and its egress rules;
    /// `false` when one with this id exists already (a redelivery).
    pub async fn insert_session_if_absent(
        &self,
        session: &Session,
        env: &BTreeMap<String, String>,
        egress: &Egress,
    ) -> Result<bool, StoreError> {
        let inserted = match &self.pool {
            Pool::Sqlite { batcher, .. } => {
                batcher
                    .submit(|done| batch::Write::InsertSession {
                        session: Box::new(session.clone()),
                        env: env.clone(),
                        egress: egress.clone(),
                        done,
                        inserted: false,
                    })
                    .await?
            }
            Pool::Postgres(pool) => {
                insert_session_query!(session, env, egress)
                    .execute(pool)
                    .await?
                    .rows_affected()
                    == 1
            }
        };
        Ok(inserted)
    }

    pub async fn get_session(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        Ok(self
            .get_session_with_spec(id)
            .await?
            .map(|(session, _)| session))
    }

    /// A session and the container spec it was recorded with.
    pub async fn get_session_with_spec(
        &self,
        id: &SessionId,
    ) -> Result<Option<(Session, ContainerSpec)>, StoreError> {
        let sql = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE id = $1"
        );
        let row: Option<SessionRow> = on_pool!(self, pool => {
            sqlx::query_as(sql).bind(id.as_str()).fetch_optional(pool).await?
        });
        row.map(SessionRow::into_session_and_spec).transpose()
    }

    /// The sessions of `ids` that exist, by id, read in queries of at most [`IDS_PER_QUERY`]
    /// ids each.
    pub async fn get_sessions(
        &self,
        ids: &[SessionId],
    ) -> Result<HashMap<SessionId, Session>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let placeholders = (1..=chunk.len())
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {} FROM sessions WHERE id IN ({placeholders})",
                session_columns!()
            );
            let rows: Vec<SessionRow> = on_pool!(self, pool => {
                let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
                for id in chunk {
                    query = query.bind(id.as_str());
                }
                query.fetch_all(pool).await?
            });
            for session in sessions_of(rows)? {
                found.insert(session.id.clone(), session);
            }
        }
        Ok(found)
    }

    /// Sessions newest first, and how many match the filter in all.
    pub async fn list_sessions(
        &self,
        filter: &ListSessions,
    ) -> Result<(Vec<Session>, u64), StoreError> {
        let status = filter.status.map(SessionStatus::as_str);
        let template = filter.template_id.as_deref();
        let page_sql = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE ",
            session_filter!(),
            " ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
        );
        let count_sql = concat!("SELECT COUNT(*) FROM sessions WHERE ", session_filter!());
        let (rows, total): (Vec<SessionRow>, i64) = on_pool!(self, pool => {
            let rows = sqlx::query_as(page_sql)
                .bind(status)
                .bind(template)
                .bind(i64::from(filter.page.limit))
                .bind(i64::from(filter.page.offset))
                .fetch_all(pool)
                .await?;
            let total = sqlx::query_scalar(count_sql)
                .bind(status)
                .bind(template)
                .fetch_one(pool)
                .await?;
            (rows, total)
        });
        let sessions = sessions_of(rows)?;
        Ok((sessions, u64::try_from(total).unwrap_or_default()))
    }

    /// Applies `change` to the session if its status is one of `from`. Guarding on the current
    /// status is what keeps racing replicas from undoing each other (say, a late "running"
    /// after a delete).
    pub async fn transition(
        &self,
        id: &SessionId,
        from: &[SessionStatus],
        change: &Transition,
    ) -> Result<Applied, StoreError> {
        let at = now();
        let sql = format!(
            "UPDATE sessions SET status = $2, \
             runtime_node = COALESCE($3, runtime_node), \
             container_id = COALESCE($4, container_id), \
             failure_code = COALESCE($5, failure_code), \
             failure_reason = COALESCE($6, failure_reason), \
             updated_at = $7, \
             started_at = CASE WHEN $2 = 'running' THEN $7 ELSE started_at END, \
             ended_at = CASE WHEN $2 IN ('failed', 'terminated', 'lost') THEN COALESCE(ended_at, $7) \
                        ELSE ended_at END \
             WHERE id = $1 AND status IN ({}) RETURNING {}",
            status_list(from),
            session_columns!()
        );
        let updated: Option<SessionRow> = match &self.pool {
            Pool::Sqlite { batcher, .. } => {
                batcher
                    .submit(|done| batch::Write::Transition {
                        sql,
                        id: id.clone(),
                        change: change.clone(),
                        at,
                        done,
                        row: None,
                    })
                    .await?
            }
            Pool::Postgres(pool) => {
                transition_query!(sql, id, change, at)
                    .fetch_optional(pool)
                    .await?
            }
        };
        self.applied(id, updated).await
    }

    /// Sets a live session's timeout, counted from `at`.
    pub async fn set_session_timeout(
        &self,
        id: &SessionId,
        timeout_seconds: u64,
        at: DateTime<Utc>,
    ) -> Result<Applied, StoreError> {
        let sql = format!(
            "UPDATE sessions SET timeout_seconds = $2, expires_at = $3, updated_at = $4 \
             WHERE id = $1 AND status IN ({}) RETURNING {}",
            live_statuses(),
            session_columns!()
        );
        let updated: Option<SessionRow> = on_writer!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id.as_str())
                .bind(rows::to_i64(timeout_seconds))
                .bind(messages::session::expiry(at, timeout_seconds))
                .bind(at)
                .fetch_optional(pool)
                .await?
        });
        self.applied(id, updated).await
    }

    /// What a guarded `UPDATE ... RETURNING` did: the row it returned, or else (the session was
    /// in another status, or is absent) the session as it is.
    async fn applied(
        &self,
        id: &SessionId,
        updated: Option<SessionRow>,
    ) -> Result<Applied, StoreError> {
        match updated {
            Some(row) => Ok(Applied::Changed(row.into_session_and_spec()?.0)),
            None => Ok(self
                .get_session(id)
                .await?
                .map_or(Applied::Missing, Applied::Unchanged)),
        }
    }

    /// Live sessions whose time ran out by `now`.
    pub async fn expired_sessions(&self, now: DateTime<Utc>) -> Result<Vec<Session>, StoreError> {
        let sql = format!(
            "SELECT {} FROM sessions WHERE status IN ({}) AND expires_at < $1 \
             ORDER BY expires_at LIMIT 500",
            session_columns!(),
            live_statuses()
        );
        self.sessions_where(sql, Param::Time(now)).await
    }

    /// Sessions still not running that were accepted before `before`.
    pub async fn sessions_not_started_since(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<Session>, StoreError> {
        let sql = format!(
            "SELECT {} FROM sessions WHERE status IN ('pending', 'creating') AND created_at < $1 \
             ORDER BY created_at LIMIT 500",
            session_columns!()
        );
        self.sessions_where(sql, Param::Time(before)).await
    }

    /// The live sessions recorded on `node`.
    pub async fn live_sessions_on(&self, node: &NodeId) -> Result<Vec<Session>, StoreError> {
        let sql = format!(
            "SELECT {} FROM sessions WHERE runtime_node = $1 AND status IN ({}) ORDER BY id",
            session_columns!(),
            live_statuses()
        );
        self.sessions_where(sql, Param::Text(node.as_str())).await
    }

    /// Runs a session query with its one parameter.
    async fn sessions_where(
        &self,
        sql: String,
        param: Param<'_>,
    ) -> Result<Vec<Session>, StoreError> {
        let rows: Vec<SessionRow> = on_pool!(self, pool => {
            let query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
            let query = match param {
                Param::Time(at) => query.bind(at),
                Param::Text(text) => query.bind(text),
            };
            query.fetch_all(pool).await?
        });
        sessions_of(rows)
    }
}

fn sessions_of(rows: Vec<SessionRow>) -> Result<Vec<Session>, StoreError> {
    rows.into_iter()
        .map(|row| row.into_session_and_spec().map(|(session, _)| session))
        .collect()
}

/// The one parameter of a session query.
enum Param<'a> {
    Time(DateTime<Utc>),
    Text(&'a str),
}
