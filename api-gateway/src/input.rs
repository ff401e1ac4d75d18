//! Checks on user input that several endpoints share.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use messages::session::is_env_name;

use crate::error::ApiError;

pub const MAX_ENV_ENTRIES: usize = 64;
pub const MAX_ENV_VALUE_BYTES: usize = 4 * 1024;
const DEFAULT_PAGE_LIMIT: u32 = 50;
const MAX_PAGE_LIMIT: u32 = 500;

/// Environment variables for a container or a run: a bounded number of valid names with
/// bounded values. Refusals are 422 (the JSON was well formed, its content is not).
pub fn check_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let invalid = |message: String| ApiError::invalid(StatusCode::UNPROCESSABLE_ENTITY, message);
    if env.len() > MAX_ENV_ENTRIES {
        return Err(invalid(format!(
            "env may have at most {MAX_ENV_ENTRIES} entries, not {}",
            env.len()
        )));
    }
    for (name, value) in env {
        if !is_env_name(name) {
            return Err(invalid(format!(
                "env name {name:?} is not valid: use [A-Za-z_][A-Za-z0-9_]*"
            )));
        }
        if value.len() > MAX_ENV_VALUE_BYTES {
            return Err(invalid(format!(
                "env value of {name} is longer than {MAX_ENV_VALUE_BYTES} bytes"
            )));
        }
        // A process environment cannot carry NUL; it would be refused late, on the node.
        if value.contains('\0') {
            return Err(invalid(format!("env value of {name} contains a NUL byte")));
        }
    }
    Ok(())
}

/// The `limit` of a paged list: 50 when absent, 1 to 500 when given.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_LIMIT);
    if (1..=MAX_PAGE_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::invalid(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_PAGE_LIMIT}"),
        ))
    }
}
