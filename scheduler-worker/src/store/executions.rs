//! The `executions` table: a run is recorded before it is sent to its node, and its first result
//! is written once, guarded on the status still being `running`.

use chrono::{DateTime, Utc};
use messages::api::PageRequest;
use messages::execution::{Execution, ExecutionResult, ExecutionStatus};
use messages::{ExecutionId, NodeId, SessionId};

use super::rows::{self, ExecutionRow};
use super::{Store, StoreError};

/// A run whose result is overdue, as the sweep sees it.
#[derive(Debug, Clone)]
pub struct OverdueExecution {
    pub id: ExecutionId,
    pub runtime_node: Option<NodeId>,
}

/// The columns of an execution row, spelled once for every query that reads executions.
macro_rules! execution_columns {
    () => {
        "id, session_id, status, language, code, stdout, stderr, exit_code, truncated, error, \
         state_lost, return_value, fresh, timeout_secs, runtime_node, duration_ms, metrics, \
         created_at, started_at, completed_at"
    };
}

impl Store {
    /// Records a new run; its result is due by `result_due_at`.
    pub async fn insert_execution(
        &self,
        execution: &Execution,
        result_due_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let sql = concat!(
            "INSERT INTO executions (",
            execution_columns!(),
            ", result_due_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15, $16, $17, $18, $19, $20, $21)"
        );
        on_writer!(self, pool => {
            sqlx::query(sql)
                .bind(execution.id.as_str())
                .bind(execution.session_id.as_str())
                .bind(execution.status.as_str())
                .bind(execution.language.as_str())
                .bind(&execution.code)
                .bind(&execution.stdout)
                .bind(&execution.stderr)
                .bind(execution.exit_code.map(i64::from))
                .bind(execution.truncated)
                .bind(execution.error.as_deref())
                .bind(execution.state_lost)
                .bind(execution.return_value.as_deref())
                .bind(execution.fresh)
                .bind(i64::from(execution.timeout_secs))
                .bind(execution.runtime_node.as_ref().map(NodeId::as_str))
                .bind(execution.duration_ms.map(rows::to_i64))
                .bind(execution.metrics.as_ref().map(rows::to_json))
                .bind(execution.created_at)
                .bind(execution.started_at)
                .bind(execution.completed_at)
                .bind(result_due_at)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn get_execution(&self, id: &ExecutionId) -> Result<Option<Execution>, StoreError> {
        let sql = concat!(
            "SELECT ",
            execution_columns!(),
            " FROM executions WHERE id = $1"
        );
        let row: Option<ExecutionRow> = on_pool!(self, pool => {
            sqlx::query_as(sql).bind(id.as_str()).fetch_optional(pool).await?
        });
        row.map(Execution::try_from).transpose()
    }

    /// A session's executions newest first, and how many it has in all.
    pub async fn list_executions(
        &self,
        session_id: &SessionId,
        page: PageRequest,
    ) -> Result<(Vec<Execution>, u64), StoreError> {
        let page_sql = concat!(
            "SELECT ",
            execution_columns!(),
            " FROM executions WHERE session_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
        );
        let (rows, total): (Vec<ExecutionRow>, i64) = on_pool!(self, pool => {
            let rows = sqlx::query_as(page_sql)
                .bind(session_id.as_str())
                .bind(i64::from(page.limit))
                .bind(i64::from(page.offset))
                .fetch_all(pool)
                .await?;
            let total = sqlx::query_scalar("SELECT COUNT(*) FROM executions WHERE session_id = $1")
                .bind(session_id.as_str())
                .fetch_one(pool)
                .await?;
            (rows, total)
        });
        let executions = rows
            .into_iter()
            .map(Execution::try_from)
            .collect::<Result<_, _>>()?;
        Ok((executions, u64::try_from(total).unwrap_or_default()))
    }

    /// Writes `result` if the execution is still `running`; returns the execution as it is
    /// afterwards and whether this call recorded it. A second result never overwrites the first.
    pub async fn record_execution_result(
        &self,
        result: &ExecutionResult,
    ) -> Result<Option<(Execution, bool)>, StoreError> {
        let changed = on_writer!(self, pool => {
            sqlx::query(
                "UPDATE executions SET status = $2, exit_code = $3, stdout = $4, stderr = $5, \
                 truncated = $6, error = $7, state_lost = $8, return_value = $9, \
                 duration_ms = $10, metrics = $11, started_at = COALESCE($12, started_at), \
                 completed_at = $13 \
                 WHERE id = $1 AND status = 'running'",
            )
            .bind(result.execution_id.as_str())
            .bind(result.status.as_str())
            .bind(result.exit_code.map(i64::from))
            .bind(&result.stdout)
            .bind(&result.stderr)
            .bind(result.truncated)
            .bind(result.error.as_deref())
            .bind(result.state_lost)
            .bind(result.return_value.as_deref())
            .bind(result.duration_ms.map(rows::to_i64))
            .bind(result.metrics.as_ref().map(rows::to_json))
            .bind(result.started_at)
            .bind(result.completed_at)
            .execute(pool)
            .await?
            .rows_affected()
        }) == 1;
        Ok(self
            .get_execution(&result.execution_id)
            .await?
            .map(|execution| (execution, changed)))
    }

    /// Up to `limit` executions still `running` whose result was due before `now`, most
    /// overdue first: only what failing them needs, not their code and output.
    pub async fn overdue_executions(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OverdueExecution>, StoreError> {
        let rows: Vec<(String, Option<String>)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, runtime_node FROM executions \
                 WHERE status = $1 AND result_due_at < $2 ORDER BY result_due_at LIMIT $3",
            )
            .bind(ExecutionStatus::Running.as_str())
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(id, runtime_node)| {
                let corrupt = |reason: String| StoreError::Corrupt {
                    table: "executions",
                    id: id.clone(),
                    reason,
                };
                Ok(OverdueExecution {
                    id: ExecutionId::parse(id.as_str()).map_err(|e| corrupt(e.to_string()))?,
                    runtime_node: runtime_node
                        .map(|node| NodeId::parse(node).map_err(|e| corrupt(e.to_string())))
                        .transpose()?,
                })
            })
            .collect()
    }
}
