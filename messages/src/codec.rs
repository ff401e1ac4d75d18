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
    #[error("cannot decode payload: {0} bytes left over after the value")]
    TrailingBytes(usize),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Decodes exactly one value: bytes after it mean the payload is not what it claims to be
/// (plain text such as `hello` would otherwise read as the number 104).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let mut rest = bytes;
    let value = T::deserialize(&mut rmp_serde::Deserializer::new(&mut rest))?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(CodecError::TrailingBytes(rest.len()))
    }
}

/// Any payload as JSON, for people watching subjects (`sandbox-watch`).
pub fn to_json(bytes: &[u8]) -> Result<serde_json::Value, CodecError> {
    decode(bytes)
}
