//! The benchmark's control of a simulated fleet (`node-daemon --simulate-nodes`): making nodes go
//! silent, and reading the fleet's counters. Nothing in production sends these.

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;

/// On [`crate::subjects::simulation_silence`] (a request): these nodes stop heartbeating and
/// answering anything, as a hung daemon whose connection stays open would.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SilenceNodes {
    pub node_ids: Vec<NodeId>,
}

/// How many of the named nodes the fleet holds and silenced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesSilenced {
    pub silenced: u32,
}

/// On [`crate::subjects::simulation_stats`] (a request).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetStatsRequest {}

/// The fleet's counters since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStats {
    pub nodes: u32,
    /// Containers made (not counting repeated creates answered with the existing one).
    pub created: u64,
    /// Creates answered with the container the session already had.
    pub existed: u64,
    /// Creates refused by the admission check (node full).
    pub refused: u64,
    pub removed: u64,
    pub running: u64,
    /// The most containers any one node held at once.
    pub peak_containers: u32,
    /// Nodes whose allocations ever exceeded their capacity (the admission rule makes it 0).
    pub over_capacity_nodes: u32,
    pub heartbeats: u64,
}
