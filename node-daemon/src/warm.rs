//! The warm pools' state, pure: for each template that asks for one, the spec its containers are
//! made from, how many this node keeps, and those ready to be claimed. `pool.rs` does the engine
//! work around it; every change of the state is a method here, made under one lock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use messages::SessionId;
use messages::template::ContainerSpec;
use tokio::sync::Notify;

/// A running warm container, not yet claimed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WarmContainer {
    /// The session id it was made (and is held in the ledger) under until claimed.
    pub pool_id: SessionId,
    pub container_id: String,
}

/// One template's pool on this node.
#[derive(Debug)]
struct Pool {
    spec: ContainerSpec,
    size: usize,
    ready: VecDeque<WarmContainer>,
}

/// Every pool of this node, by template id.
#[derive(Debug, Default)]
pub(crate) struct WarmPools {
    pools: Mutex<HashMap<String, Pool>>,
    /// Wakes the refill after a claim or a loss.
    refill: Notify,
}

impl WarmPools {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Pool>> {
        // Held only for map operations, which do not panic half-way.
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a ready container whose spec is exactly `spec`, if a pool has one, and wakes the
    /// refill.
    pub fn take(&self, spec: &ContainerSpec) -> Option<WarmContainer> {
        let taken = self
            .lock()
            .values_mut()
            .find(|pool| &pool.spec == spec && !pool.ready.is_empty())
            .and_then(|pool| pool.ready.pop_front());
        if taken.is_some() {
            self.refill.notify_one();
        }
        taken
    }

    /// Takes the ready container `container_id` out of its pool, if it is in one.
    pub fn remove(&self, container_id: &str) -> Option<WarmContainer> {
        self.lock().values_mut().find_map(|pool| {
            let index = pool
                .ready
                .iter()
                .position(|warm| warm.container_id == container_id)?;
            pool.ready.remove(index)
        })
    }

    /// Takes the newest ready container of any pool, to make room for a session.
    pub fn take_any(&self) -> Option<WarmContainer> {
        self.lock()
            .values_mut()
            .find_map(|pool| pool.ready.pop_back())
    }

    /// Makes the pools those of `wanted` (template id to spec and size): a pool whose template
    /// is gone or whose spec changed is dropped, the others take their new size. Returns the
    /// ready containers no pool wants any more.
    pub fn resize(&self, wanted: HashMap<String, (ContainerSpec, usize)>) -> Vec<WarmContainer> {
        let mut surplus = Vec::new();
        let mut pools = self.lock();
        pools.retain(|template_id, pool| {
            let keep = wanted
                .get(template_id)
                .is_some_and(|(spec, _)| spec == &pool.spec);
            if !keep {
                surplus.extend(pool.ready.drain(..));
            }
            keep
        });
        for (template_id, (spec, size)) in wanted {
            let pool = pools.entry(template_id).or_insert_with(|| Pool {
                spec,
                size,
                ready: VecDeque::new(),
            });
            pool.size = size;
            while pool.ready.len() > pool.size {
                surplus.extend(pool.ready.pop_back());
            }
        }
        surplus
    }

    /// A pool short of its size, other than those in `skip`: its template id and spec.
    pub fn next_to_fill(&self, skip: &HashSet<String>) -> Option<(String, ContainerSpec)> {
        self.lock()
            .iter()
            .find(|(template_id, pool)| {
                pool.ready.len() < pool.size && !skip.contains(*template_id)
            })
            .map(|(template_id, pool)| (template_id.clone(), pool.spec.clone()))
    }

    /// Adds a container made from `spec` to `template_id`'s pool; given back when the pool is
    /// gone or wants another spec now (the template changed while it started).
    pub fn add_ready(
        &self,
        template_id: &str,
        spec: &ContainerSpec,
        warm: WarmContainer,
    ) -> Result<(), WarmContainer> {
        match self.lock().get_mut(template_id) {
            Some(pool) if &pool.spec == spec => {
                pool.ready.push_back(warm);
                Ok(())
            }
            _ => Err(warm),
        }
    }

    /// Asks the refill to look at the pools again.
    pub fn wake_refill(&self) {
        self.refill.notify_one();
    }

    /// Returns when the refill was asked to look again.
    pub async fn refill_wanted(&self) {
        self.refill.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use messages::template::{NetworkMode, Resources};

    use super::*;

    fn spec(memory_mb: u64) -> ContainerSpec {
        ContainerSpec {
            image: "sandbox-executor:v1.0".to_owned(),
            resources: Resources {
                cpu_cores: 0.5,
                memory_mb,
                pids_limit: 64,
                ..Resources::default()
            },
            network: NetworkMode::None,
            env: BTreeMap::new(),
            runtime: Default::default(),
            egress: Default::default(),
        }
    }

    fn warm(n: u32) -> WarmContainer {
        WarmContainer {
            pool_id: SessionId::parse(format!("pool-{n}")).expect("valid"),
            container_id: format!("c{n}"),
        }
    }

    fn wanted(pools: &[(&str, ContainerSpec, usize)]) -> HashMap<String, (ContainerSpec, usize)> {
        pools
            .iter()
            .map(|(id, spec, size)| ((*id).to_owned(), (spec.clone(), *size)))
            .collect()
    }

    #[test]
    fn claims_take_only_an_exact_spec_and_pools_fill_to_their_size() {
        let pools = WarmPools::default();
        assert!(pools.resize(wanted(&[("py", spec(256), 2)])).is_empty());
        let none = HashSet::new();
        assert_eq!(
            pools.next_to_fill(&none),
            Some(("py".to_owned(), spec(256)))
        );
        assert_eq!(pools.add_ready("py", &spec(256), warm(1)), Ok(()));
        assert_eq!(pools.add_ready("py", &spec(256), warm(2)), Ok(()));
        assert_eq!(pools.next_to_fill(&none), None, "full");

        assert_eq!(
            pools.take(&spec(512)),
            None,
            "another spec is never handed out"
        );
        assert_eq!(pools.take(&spec(256)), Some(warm(1)), "the oldest first");
        assert_eq!(
            pools.next_to_fill(&HashSet::from(["py".to_owned()])),
            None,
            "a skipped pool is not filled"
        );
        assert!(pools.next_to_fill(&none).is_some());
        assert_eq!(pools.remove("c2"), Some(warm(2)));
        assert_eq!(pools.remove("c2"), None);
        assert_eq!(pools.take_any(), None);
    }

    #[test]
    fn resizing_gives_back_what_no_pool_wants() {
        let pools = WarmPools::default();
        pools.resize(wanted(&[("py", spec(256), 3), ("sh", spec(128), 1)]));
        for n in 1..=3 {
            assert_eq!(pools.add_ready("py", &spec(256), warm(n)), Ok(()));
        }
        assert_eq!(pools.add_ready("sh", &spec(128), warm(4)), Ok(()));
        // Smaller: the newest go. Template gone: all of its containers go.
        let surplus = pools.resize(wanted(&[("py", spec(256), 1)]));
        assert_eq!(surplus.len(), 3);
        assert!(surplus.contains(&warm(4)));
        assert!(!surplus.contains(&warm(1)));
        // Spec changed: the old containers go, and one made from the old spec is not taken.
        let surplus = pools.resize(wanted(&[("py", spec(512), 1)]));
        assert_eq!(surplus, vec![warm(1)]);
        assert_eq!(pools.add_ready("py", &spec(256), warm(5)), Err(warm(5)));
        assert_eq!(pools.add_ready("gone", &spec(256), warm(6)), Err(warm(6)));
    }
}
