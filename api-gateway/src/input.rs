//! Checks on user input that several endpoints share: the contract's rules
//! (`messages::limits`) answered as 422, and paging.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use messages::api::PageRequest;

use crate::error::ApiError;

const DEFAULT_PAGE_LIMIT: u32 = 50;
const MAX_PAGE_LIMIT: u32 = 500;

/// A rule of the contract broken by well-formed JSON: 422 with the rule's reason.
pub fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::invalid(StatusCode::UNPROCESSABLE_ENTITY, message)
}

/// Environment variables for a container or a run (`messages::limits::check_env`).
pub fn check_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    messages::limits::check_env(env).map_err(unprocessable)
}

/// The page of a list a query asks for: `limit` 50 when absent, 1 to 500 when given; `offset`
/// 0 when absent.
pub fn page(limit: Option<u32>, offset: Option<u32>) -> Result<PageRequest, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_LIMIT);
    if (1..=MAX_PAGE_LIMIT).contains(&limit) {
        Ok(PageRequest {
            limit,
            offset: offset.unwrap_or(0),
        })
    } else {
        Err(ApiError::invalid(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_PAGE_LIMIT}"),
        ))
    }
}
