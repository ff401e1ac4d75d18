//! The scheduler's database: SQLite by default, PostgreSQL when the URL says `postgres://`.
//! One set of SQL serves both (placeholders `$n` work in each); migrations differ only in types.
//! One file per table (`sessions`, `templates`, `nodes`, `executions`); the SQL several of them
//! share is in `queries.rs`.

#[macro_use]
mod queries;

mod batch;
mod executions;
mod nodes;
mod rows;
mod sessions;
mod templates;

use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use executions::OverdueExecution;
pub use rows::NodeRecord;
pub use sessions::{Applied, Transition};

/// A database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported DATABASE_URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database writer stopped")]
    WriterGone,
    #[error("a batch of database writes failed: {0}")]
    BatchFailed(String),
    #[error("row {table}/{id} holds an invalid value: {reason}")]
    Corrupt {
        table: &'static str,
        id: String,
        reason: String,
    },
    /// A row that was just written or read is gone (rows are never deleted): a broken database.
    #[error("row {table}/{id} vanished")]
    Vanished { table: &'static str, id: String },
}

#[derive(Debug, Clone)]
enum Pool {
    /// Reads share `readers`; every write goes through the one `writer` connection. SQLite
    /// takes one writer at a time, and a second connection that tries waits in SQLite's busy
    /// handler, which sleeps in steps of milliseconds: queueing writers on one connection
    /// in-process instead keeps a busy scheduler's writes at their real cost.
    Sqlite {
        readers: SqlitePool,
        writer: SqlitePool,
        /// Commits the placements' session writes in batches, on `writer`.
        batcher: batch::Batcher,
    },
    Postgres(PgPool),
}

/// The database of sessions, templates, nodes and executions. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
}

/// The current time at the database's precision (microseconds), so what is written reads back
/// equal.
pub fn now() -> DateTime<Utc> {
    messages::session::at_storage_precision(Utc::now())
}

impl Store {
    /// Connects and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?,
            )
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                // WAL lets readers and the one writer proceed together; the busy timeout lets
                // several replicas on one host share the file.
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10))
                // In WAL mode, NORMAL syncs at checkpoints rather than at every commit: a
                // crash of the process loses nothing, a power cut may lose the last commits.
                // That is the durability JetStream's file store gives the requests themselves
                // (it syncs periodically), and the node daemons' inventories reconcile what
                // the database forgot. FULL would bound placements by the disk's fsync rate.
                .synchronous(SqliteSynchronous::Normal);
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await?;
            let readers = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await?;
            let batcher = batch::Batcher::start(writer.clone());
            Pool::Sqlite {
                readers,
                writer,
                batcher,
            }
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let store = Self { pool };
        store.migrate().await?;
        store.seed().await?;
        Ok(store)
    }

    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite { .. } => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Waits, up to `deadline`, until every write queued so far is committed (on SQLite, where
    /// they queue for the one writer; PostgreSQL commits each as it is made).
    pub async fn flush_writes(&self, deadline: Duration) {
        if let Pool::Sqlite { batcher, .. } = &self.pool
            && tokio::time::timeout(deadline, batcher.barrier())
                .await
                .is_err()
        {
            tracing::warn!("the database's last writes did not commit by the deadline");
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Sqlite { writer, .. } => {
                sqlx::migrate!("./migrations/sqlite").run(writer).await?;
            }
            Pool::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }
}
