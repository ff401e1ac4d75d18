//! The store behaves the same on SQLite and PostgreSQL, and the seed's own SQL works on it. Each
//! case is a test of its own on a fresh database of each backend, `sqlite::<case>` and
//! `postgres::<case>`, so a failure names both the case and the backend.

mod executions;
mod fixtures;
mod nodes;
mod operations;
mod sessions;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use sandbox_ops::testkit::Postgres;
use scheduler_worker::store::Store;

/// A fresh store on one backend. Cases that need only the
/// store take `&Store`: a `&Database` derefs to it.
#[derive(Debug)]
pub struct Database {
    pub store: Store,
    pub url: String,
    backend: Backend,
}

/// The backend, holding what keeps the database alive.
#[derive(Debug)]
enum Backend {
    Sqlite { _dir: tempfile::TempDir },
    Postgres { _cluster: Arc<Postgres> },
}

impl Database {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/sandbox.db", dir.path().display());
        Self::connect(url, Backend::Sqlite { _dir: dir }).await
    }

    /// A new database in the PostgreSQL cluster the tests running now share.
    async fn postgres() -> Self {
        static DATABASES: AtomicUsize = AtomicUsize::new(0);
        let cluster = shared_cluster();
        let name = format!("store_{}", DATABASES.fetch_add(1, Ordering::Relaxed));
        let url = cluster.create_database(&name).expect("database created");
        Self::connect(url, Backend::Postgres { _cluster: cluster }).await
    }

    async fn connect(url: String, backend: Backend) -> Self {
        let store = Store::connect(&url).await.expect("connects");
        Self {
            store,
            url,
            backend,
        }
    }

    /// Connects again to the same database, as a restarted scheduler does.
    pub async fn reconnect(&self) -> Store {
        Store::connect(&self.url).await.expect("reconnects")
    }

    /// Runs `sql` on the database directly, as an operator would, and reads one row.
    pub async fn query_one<T>(&self, sql: &'static str) -> T
    where
        T: Send
            + Unpin
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        let row = match &self.backend {
            Backend::Sqlite { .. } => {
                let pool = sqlx::SqlitePool::connect(&self.url)
                    .await
                    .expect("opens the file");
                sqlx::query_as(sql).fetch_one(&pool).await
            }
            Backend::Postgres { .. } => {
                let pool = sqlx::PgPool::connect(&self.url).await.expect("connects");
                sqlx::query_as(sql).fetch_one(&pool).await
            }
        };
        row.unwrap_or_else(|error| panic!("{sql} failed: {error}"))
    }

    /// Runs a PostgreSQL statement directly, as an operator would.
    pub async fn execute_on_postgres(&self, sql: &'static str) {
        let pool = sqlx::PgPool::connect(&self.url).await.expect("connects");
        sqlx::query(sql)
            .execute(&pool)
            .await
            .unwrap_or_else(|error| panic!("{sql} failed: {error}"));
    }
}

impl std::ops::Deref for Database {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

/// One cluster for the tests running at the same time, stopped when the last of them ends (a
/// cluster in a static would never be dropped, so never stopped).
fn shared_cluster() -> Arc<Postgres> {
    static SHARED: Mutex<Weak<Postgres>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(Postgres::start().expect("postgres starts"));
    *shared = Arc::downgrade(&cluster);
    cluster
}

/// A `#[tokio::test]` per case and backend: `both` cases run on SQLite and PostgreSQL,
/// `postgres_only` ones (the seed's PostgreSQL SQL) on PostgreSQL.
macro_rules! store_cases {
    (
        both: [$($module:ident::$case:ident),* $(,)?],
        postgres_only: [$($pg_module:ident::$pg_case:ident),* $(,)?] $(,)?
    ) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let database = super::Database::sqlite().await;
                    super::$module::$case(&database).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let database = super::Database::postgres().await;
                    super::$module::$case(&database).await;
                }
            )*
            $(
                #[tokio::test]
                async fn $pg_case() {
                    let database = super::Database::postgres().await;
                    super::$pg_module::$pg_case(&database).await;
                }
            )*
        }
    };
}

store_cases! {
    both: [
        sessions::the_seed_templates_are_there,
        sessions::a_session_is_recorded_once_whatever_the_redeliveries,
        sessions::transitions_are_guarded_by_the_current_status,
        sessions::failures_keep_their_code_and_reason,
        sessions::sessions_are_read_by_ids_in_chunks,
        sessions::sessions_are_listed_newest_first_with_filters_and_pages,
        sessions::the_seeds_query_shows_the_newest_session,
        sessions::the_seeds_template_query_runs,
        sessions::connecting_again_migrates_nothing_twice_and_keeps_the_data,
        nodes::a_node_is_recorded_from_its_registration_then_its_heartbeats,
        nodes::a_declaration_outlives_registrations_and_drain_is_recorded,
        operations::templates_are_created_updated_and_deleted,
        operations::sessions_expire_are_kept_alive_and_end,
        executions::runs_are_listed_newest_first_per_session,
        executions::a_run_gets_exactly_one_result,
        executions::overdue_runs_are_listed_most_overdue_first,
    ],
    postgres_only: [nodes::the_seeds_static_registration_is_read_as_a_node],
}
