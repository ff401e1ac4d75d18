//! Group commit for SQLite: the session writes of many concurrent placements share one
//! transaction. SQLite commits one transaction at a time, and each commit writes every page it
//! touched to the WAL; committing a batch at once writes shared pages once and keeps a busy
//! scheduler's commit count far below its write count. PostgreSQL does its own group commit
//! across connections and does not use this.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use messages::SessionId;
use messages::egress::Egress;
use messages::session::Session;
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::rows::SessionRow;
use super::{StoreError, Transition};

/// The most writes one transaction carries.
const MAX_BATCH: usize = 256;

/// A write waiting for its batch, where its outcome goes once committed, and (after it ran)
/// what it produced.
#[derive(Debug)]
pub(super) enum Write {
    InsertSession {
        session: Box<Session>,
        env: BTreeMap<String, String>,
        egress: Egress,
        done: oneshot::Sender<Result<bool, StoreError>>,
        inserted: bool,
    },
    Transition {
        /// The guarded `UPDATE ... RETURNING` (its `IN` list depends on the call).
        sql: String,
        id: SessionId,
        change: Transition,
        at: DateTime<Utc>,
        done: oneshot::Sender<Result<Option<SessionRow>, StoreError>>,
        row: Option<Box<SessionRow>>,
    },
    /// Writes nothing: answered once every write queued before it is committed.
    Barrier {
        done: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Hands writes to the one task that commits them in batches. Cheap to clone; the task ends
/// when the last clone is dropped.
#[derive(Debug, Clone)]
pub(super) struct Batcher {
    queue: mpsc::Sender<Write>,
}

impl Batcher {
    /// Starts the committing task on `writer` (the store's one writing connection).
    pub(super) fn start(writer: SqlitePool) -> Self {
        let (queue, writes) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(writer, writes));
        Self { queue }
    }

    /// Queues a write and waits until it is committed (or failed).
    pub(super) async fn submit<T>(
        &self,
        write: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Write,
    ) -> Result<T, StoreError> {
        let (done, outcome) = oneshot::channel();
        self.queue
            .send(write(done))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        outcome.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Returns once every write queued so far is committed (or failed): at shutdown, so the
    /// last placements' writes are in before the process ends.
    pub(super) async fn barrier(&self) {
        if let Err(error) = self.submit(|done| Write::Barrier { done }).await {
            tracing::warn!(%error, "the database writer stopped before its last writes");
        }
    }
}

/// Takes whatever writes are queued (up to [`MAX_BATCH`]) and commits them together; a single
/// write waiting alone is committed at once, so an idle scheduler pays no delay.
async fn run(writer: SqlitePool, mut writes: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while writes.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if batch.len() == 1 {
            apply_alone(&writer, &mut batch).await;
            continue;
        }
        match apply_together(&writer, &mut batch).await {
            Ok(()) => batch.drain(..).for_each(|write| write.reply(Ok(()))),
            // A statement refused (a constraint, a bad value): nothing of the batch was kept,
            // and each write is tried on its own, so one bad write fails alone.
            Err(error) if refused_statement(&error) => {
                tracing::debug!(%error, writes = batch.len(), "a write batch failed; writing one by one");
                apply_alone(&writer, &mut batch).await;
            }
            // The database itself failed (busy, locked, I/O, no connection): so would each
            // write, one busy timeout after another.
            Err(error) => {
                let reason = error.to_string();
                batch
                    .drain(..)
                    .for_each(|write| write.reply(Err(StoreError::BatchFailed(reason.clone()))));
            }
        }
    }
}

/// Whether `error` is one statement's refusal rather than a failure of the database.
fn refused_statement(error: &sqlx::Error) -> bool {
    // SQLITE_BUSY and SQLITE_LOCKED, with their extended codes (the low byte).
    const BUSY: i64 = 5;
    const LOCKED: i64 = 6;
    match error {
        sqlx::Error::Database(error) => error
            .code()
            .and_then(|code| code.parse::<i64>().ok())
            .is_none_or(|code| !matches!(code & 0xff, BUSY | LOCKED)),
        _ => false,
    }
}

/// Runs the writes in one transaction and commits it; on any error it is rolled back.
async fn apply_together(writer: &SqlitePool, batch: &mut [Write]) -> Result<(), sqlx::Error> {
    let mut transaction = writer.begin().await?;
    for write in batch.iter_mut() {
        write.execute(&mut *transaction).await?;
    }
    transaction.commit().await
}

/// Commits each write in its own transaction, and answers it.
async fn apply_alone(writer: &SqlitePool, batch: &mut Vec<Write>) {
    for mut write in batch.drain(..) {
        let outcome = write.execute(writer).await.map_err(StoreError::from);
        write.reply(outcome);
    }
}

impl Write {
    /// Runs the statement and keeps what it produced for [`Write::reply`].
    async fn execute<'c, E>(&mut self, executor: E) -> Result<(), sqlx::Error>
    where
        E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
    {
        match self {
            Write::InsertSession {
                session,
                env,
                egress,
                inserted,
                ..
            } => {
                *inserted = insert_session_query!(&**session, &*env, &*egress)
                    .execute(executor)
                    .await?
                    .rows_affected()
                    == 1;
            }
            Write::Transition {
                sql,
                id,
                change,
                at,
                row,
                ..
            } => {
                let updated: Option<SessionRow> =
                    transition_query!(sql.as_str(), &*id, &*change, *at)
                        .fetch_optional(executor)
                        .await?;
                *row = updated.map(Box::new);
            }
            Write::Barrier { .. } => {}
        }
        Ok(())
    }

    /// Tells the waiting caller the outcome (what the write produced, once committed); a caller
    /// that stopped waiting is no concern.
    fn reply(self, outcome: Result<(), StoreError>) {
        match self {
            Write::InsertSession { done, inserted, .. } => {
                let _ = done.send(outcome.map(|()| inserted));
            }
            Write::Transition { done, row, .. } => {
                let _ = done.send(outcome.map(|()| row.map(|row| *row)));
            }
            Write::Barrier { done } => {
                let _ = done.send(outcome);
            }
        }
    }
}
