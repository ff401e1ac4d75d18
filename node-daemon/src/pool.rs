//! Warm pools: for each template that asks for one (`warm_pool_size`), this node keeps that many
//! containers created and running, so a session create claims one (renamed to the session)
//! instead of starting a container. Warm containers count against capacity like any other; a
//! claimed one was never given to anyone before, and the pool refills in the background. The
//! pools' state is `warm.rs`; this is what the engine and the ledger do around it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use messages::api::templates::{ListTemplates, TemplateUpdated};
use messages::template::ContainerSpec;
use messages::{ErrorBody, ErrorCode, SessionId};
use service_kit::{Subscription, bus};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::containers;
use crate::docker::{ContainerFacts, DockerEngine};
use crate::ledger::Demand;
use crate::node::Node;
use crate::warm::WarmContainer;

/// How often the templates' pool sizes are read from the control plane.
const TEMPLATES_REFRESH: Duration = Duration::from_secs(10);
/// Over how long the nodes spread their reads of the templates after a template changed.
const TEMPLATE_NEWS_SPREAD: Duration = Duration::from_secs(1);
/// How long the refill waits after a pass that could not fill every pool (no room, no image).
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How long a request for the templates may take.
const TEMPLATES_TIMEOUT: Duration = Duration::from_secs(5);
/// Pool ids name warm containers (`sandbox-pool-…`) until a session claims them.
const POOL_ID_PREFIX: &str = "pool-";

/// Hands a warm container of exactly `spec` to `session_id`: the ledger moves its allocation to
/// the session and the container takes the session's name. `None` when no pool has one ready
/// (the caller then starts a container).
pub(crate) async fn claim(
    node: &Node,
    session_id: &SessionId,
    spec: &ContainerSpec,
) -> Option<String> {
    while let Some(warm) = node.pools.take(spec) {
        // False when the container died since it was pooled: drop it, try the next one.
        if !node.ledger().claim_warm(&warm.pool_id, session_id) {
            discard(node, &warm).await;
            continue;
        }
        match node
            .docker
            .rename(&warm.container_id, &session_id.container_name())
            .await
        {
            Ok(()) => return Some(warm.container_id),
            // The name is taken (a stopped container of the session from before a restart, the
            // ledger's one blind spot) or the engine failed: the usual path decides, and no
            // other warm container is spent on it.
            Err(error) => {
                tracing::warn!(%error, "could not claim a warm container; removing it");
                node.ledger().forget(session_id, &warm.container_id);
                remove(&node.docker, &warm.container_id).await;
                return None;
            }
        }
    }
    None
}

/// Gives up a warm container: out of the ledger and off the engine.
async fn discard(node: &Node, warm: &WarmContainer) {
    node.ledger().forget(&warm.pool_id, &warm.container_id);
    remove(&node.docker, &warm.container_id).await;
}

/// A warm container stopped on its own: it leaves its pool (which refills) and the engine.
pub(crate) async fn container_died(node: &Node, container_id: &str) {
    if let Some(warm) = node.pools.remove(container_id) {
        discard(node, &warm).await;
        node.pools.wake_refill();
    }
}

/// Frees room for a session by removing one unclaimed warm container, when a create found the
/// node full: warm containers are spare capacity, never a reason to refuse a session. Returns
/// whether one was removed.
pub(crate) async fn evict_one(node: &Node) -> bool {
    match node.pools.take_any() {
        Some(warm) => {
            tracing::info!(
                container_id = warm.container_id,
                "evicted a warm container to make room"
            );
            discard(node, &warm).await;
            true
        }
        None => false,
    }
}

/// Removes, at start, the warm containers a previous run of the daemon left unclaimed: nobody
/// holds them, and the refill makes new ones. Returns the containers that are left.
pub(crate) async fn discard_unclaimed(
    docker: &DockerEngine,
    containers: Vec<ContainerFacts>,
) -> Vec<ContainerFacts> {
    let mut kept = Vec::with_capacity(containers.len());
    for container in containers {
        if container.is_unclaimed_warm() {
            match docker.remove(&container.id).await {
                Ok(_) => continue,
                Err(error) => {
                    tracing::warn!(container_id = container.id, %error, "could not remove an old warm container; keeping it counted");
                }
            }
        }
        kept.push(container);
    }
    kept
}

/// Keeps every pool at its size until cancelled: reads the templates' pool sizes when one
/// changes (`template_updates`) and now and then in case such news was lost, and refills after
/// each claim.
pub(crate) async fn maintain(
    node: Arc<Node>,
    mut template_updates: Subscription<TemplateUpdated>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut refresh = tokio::time::interval(TEMPLATES_REFRESH);
    let mut retry = false;
    // When a template change was heard, the moment this node reads the templates.
    let mut refresh_after_news: Option<Instant> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = refresh.tick() => refresh_sizes(&node).await,
            news = template_updates.next() => {
                news?;
                // Every node hears the news at once: each reads after its own random pause, so
                // a large fleet does not ask at the same moment, and changes in quick
                // succession cost one read.
                refresh_after_news.get_or_insert_with(|| {
                    Instant::now() + TEMPLATE_NEWS_SPREAD.mul_f64(fastrand::f64())
                });
                continue;
            }
            () = sleep_until(refresh_after_news.unwrap_or_else(Instant::now)),
                if refresh_after_news.is_some() =>
            {
                refresh_after_news = None;
                refresh_sizes(&node).await;
            }
            () = node.pools.refill_wanted() => {}
            () = tokio::time::sleep(RETRY_AFTER), if retry => {}
        }
        retry = !fill(&node, &cancel).await;
    }
}

/// Reads the templates and resizes the pools to match. Unreachable schedulers leave the pools
/// as they are (logged): a warm pool is an optimisation, never a reason to fail.
async fn refresh_sizes(node: &Node) {
    let templates = match bus::api_request(&node.nats, &ListTemplates {}, TEMPLATES_TIMEOUT).await {
        Ok(templates) => templates,
        Err(error) => {
            tracing::debug!(%error, "could not read the templates' warm pool sizes");
            return;
        }
    };
    let wanted: HashMap<String, (ContainerSpec, usize)> = templates
        .iter()
        .filter(|template| template.definition.warm_pool_size > 0)
        .map(|template| {
            let size = usize::try_from(template.definition.warm_pool_size).unwrap_or(usize::MAX);
            // A warm container is made without any session's environment.
            let spec = template.container_spec_with(&BTreeMap::new());
            (template.id().to_owned(), (spec, size))
        })
        .collect();
    for warm in &node.pools.resize(wanted) {
        discard(node, warm).await;
    }
}

/// Starts containers until every pool is full; `false` when one could not be filled (no room,
/// image missing, engine error), so the caller tries again a little later.
async fn fill(node: &Node, cancel: &CancellationToken) -> bool {
    // Pools that failed this pass; the others still fill.
    let mut failed = HashSet::new();
    loop {
        if cancel.is_cancelled() {
            return true;
        }
        let Some((template_id, spec)) = node.pools.next_to_fill(&failed) else {
            return failed.is_empty();
        };
        match make_warm(node, &template_id, &spec).await {
            Ok(warm) => {
                // The template changed while the container started: it is not wanted.
                if let Err(unwanted) = node.pools.add_ready(&template_id, &spec, warm) {
                    node.ledger()
                        .forget(&unwanted.pool_id, &unwanted.container_id);
                    let docker = node.docker.clone();
                    node.background
                        .spawn(async move { remove(&docker, &unwanted.container_id).await });
                }
            }
            Err(error) => {
                tracing::debug!(template_id, %error, "could not fill a warm pool for now");
                failed.insert(template_id);
            }
        }
    }
}

async fn make_warm(
    node: &Node,
    template_id: &str,
    spec: &ContainerSpec,
) -> Result<WarmContainer, ErrorBody> {
    // A warm container never takes the node's last room: one session of the same size must
    // still fit, so the schedulers keep seeing room for it.
    let host = node.host_memory();
    if !node
        .ledger()
        .has_room_for(Demand::of(&spec.resources), 2, host)
    {
        return Err(ErrorBody::new(
            ErrorCode::Capacity,
            "no room for a warm container next to one more session",
        ));
    }
    let pool_id = SessionId::parse(format!("{POOL_ID_PREFIX}{}", uuid::Uuid::now_v7().simple()))
        .map_err(|error| ErrorBody::new(ErrorCode::Internal, error.to_string()))?;
    let container_id = containers::make(node, &pool_id, spec, Some(template_id))
        .await?
        .ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::Conflict,
                format!("the name of warm container {pool_id} is taken"),
            )
        })?;
    tracing::info!(template_id, container_id, "warm container ready");
    Ok(WarmContainer {
        pool_id,
        container_id,
    })
}

async fn remove(docker: &DockerEngine, container_id: &str) {
    if let Err(error) = docker.remove(container_id).await {
        tracing::warn!(container_id, %error, "could not remove a warm container");
    }
}
