//! The requests the gateway sends to the scheduler replicas, one module per resource (as the
//! gateway's and the scheduler's handler files are). Each request names its subject
//! (`sandbox.api.<resource>.<action>`) and its answer in one [`crate::api_request!`] line.

pub mod executions;
pub mod nodes;
pub mod sessions;
pub mod templates;

use serde::{Deserialize, Serialize};

/// Which page of a list: at most `limit` items, after skipping `offset`. Travels inline in the
/// list requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    pub limit: u32,
    pub offset: u32,
}

/// Where a page sits in its list: how many items match in all (across every page), and the page
/// that was asked for. Travels inline in the pages (`total`, `limit`, `offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageInfo {
    pub total: u64,
    #[serde(flatten)]
    pub page: PageRequest,
}

/// Every API subject, for checks that they are distinct; a server registering two handlers on
/// one subject is refused at start too.
pub const SUBJECTS: &[&str] = &[
    <sessions::GetSession as crate::ApiRequest>::SUBJECT,
    <sessions::ListSessions as crate::ApiRequest>::SUBJECT,
    <sessions::DeleteSession as crate::ApiRequest>::SUBJECT,
    <sessions::SetSessionTimeout as crate::ApiRequest>::SUBJECT,
    <templates::GetTemplate as crate::ApiRequest>::SUBJECT,
    <templates::ListTemplates as crate::ApiRequest>::SUBJECT,
    <templates::CreateTemplate as crate::ApiRequest>::SUBJECT,
    <templates::UpdateTemplate as crate::ApiRequest>::SUBJECT,
    <templates::DeleteTemplate as crate::ApiRequest>::SUBJECT,
    <nodes::GetNode as crate::ApiRequest>::SUBJECT,
    <nodes::ListNodes as crate::ApiRequest>::SUBJECT,
    <nodes::DeclareNode as crate::ApiRequest>::SUBJECT,
    <nodes::SetNodeDrain as crate::ApiRequest>::SUBJECT,
    <executions::StartExecution as crate::ApiRequest>::SUBJECT,
    <executions::GetExecution as crate::ApiRequest>::SUBJECT,
    <executions::ListExecutions as crate::ApiRequest>::SUBJECT,
    <executions::RecordExecutionResult as crate::ApiRequest>::SUBJECT,
];

#[cfg(test)]
mod tests {
    #[test]
    fn api_subjects_are_distinct_and_outside_the_fixed_namespaces() {
        let mut seen = std::collections::HashSet::new();
        for subject in super::SUBJECTS {
            assert!(seen.insert(subject), "{subject} used twice");
            assert!(subject.starts_with("sandbox.api."));
        }
    }
}
