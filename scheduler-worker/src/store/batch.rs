//! Group commit for SQLite: the session writes of many concurrent placements share one
//! transaction. SQLite commits one transaction at a time, and each commit writes every page it
//! touched to the WAL; committing a batch at once writes shared pages once and keeps a busy
//! scheduler's commit count far below its write count. PostgreSQL does its own group commit
//! across connections and does not use this.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use messages::SessionId;
use messages::session::Session;
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::rows::SessionRow;
use super::{StoreError, Transition};

/// The most writes one transaction carries.
const MAX_BATCH: usize = 256;

/// A write waiting for its batch, and where its outcome goes once committed.
#[derive(Debug)]
pub(super) enum Write {
    InsertSession {
        session: Session,
        env: BTreeMap<String, String>,
        done: oneshot::Sender<Result<bool, StoreError>>,
    },
    Transition {
        /// The guarded `UPDATE ... RETURNING` (its `IN` list depends on the call).
        sql: String,
        id: SessionId,
        change: Transition,
        at: DateTime<Utc>,
        done: oneshot::Sender<Result<Option<SessionRow>, StoreError>>,
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
}

/// Takes whatever writes are queued (up to [`MAX_BATCH`]) and commits them together; a single
/// write waiting alone is committed at once, so an idle scheduler pays no delay.
async fn run(writer: SqlitePool, mut writes: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while writes.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if batch.len() > 1 {
            match apply_together(&writer, &batch).await {
                Ok(produced) => {
                    for (write, produced) in batch.drain(..).zip(produced) {
                        write.reply(Ok(produced));
                    }
                    continue;
                }
                // Nothing of the batch was kept: each write is tried on its own, so one bad
                // write fails alone.
                Err(error) => {
                    tracing::debug!(%error, writes = batch.len(), "a write batch failed; writing one by one");
                }
            }
        }
        for write in batch.drain(..) {
            let produced = write.execute(&writer).await;
            write.reply(produced);
        }
    }
}

/// Runs the writes in one transaction and commits it; on any error it is rolled back.
async fn apply_together(
    writer: &SqlitePool,
    batch: &[Write],
) -> Result<Vec<Produced>, sqlx::Error> {
    let mut transaction = writer.begin().await?;
    let mut produced = Vec::with_capacity(batch.len());
    for write in batch {
        produced.push(write.execute(&mut *transaction).await?);
    }
    transaction.commit().await?;
    Ok(produced)
}

/// What a write produced, until it is committed and its caller told.
enum Produced {
    Inserted(bool),
    Row(Option<Box<SessionRow>>),
}

impl Write {
    async fn execute<'c, E>(&self, executor: E) -> Result<Produced, sqlx::Error>
    where
        E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
    {
        match self {
            Write::InsertSession { session, env, .. } => {
                let inserted = insert_session_query!(session, env)
                    .execute(executor)
                    .await?
                    .rows_affected()
                    == 1;
                Ok(Produced::Inserted(inserted))
            }
            Write::Transition {
                sql,
                id,
                change,
                at,
                ..
            } => {
                let row: Option<SessionRow> = transition_query!(sql.as_str(), id, change, *at)
                    .fetch_optional(executor)
                    .await?;
                Ok(Produced::Row(row.map(Box::new)))
            }
        }
    }

    /// Tells the waiting caller; one that stopped waiting is no concern.
    fn reply(self, produced: Result<Produced, sqlx::Error>) {
        match self {
            Write::InsertSession { done, .. } => {
                let inserted =
                    produced.map(|produced| matches!(produced, Produced::Inserted(true)));
                let _ = done.send(inserted.map_err(StoreError::from));
            }
            Write::Transition { done, .. } => {
                let row = produced.map(|produced| match produced {
                    Produced::Row(row) => row.map(|row| *row),
                    Produced::Inserted(_) => None,
                });
                let _ = done.send(row.map_err(StoreError::from));
            }
        }
    }
}
