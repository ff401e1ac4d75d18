//! MessagePack with field names: a payload is a map, so fields can be added without breaking
//! older readers.

use serde::{Serialize, de::DeserializeOwned};

/// A payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode payload: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode payload: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

/// Any payload as JSON, for people watching subjects (`sandbox-watch`).
pub fn to_json(bytes: &[u8]) -> Result<serde_json::Value, CodecError> {
    decode(bytes)
}
