//! Identifiers that travel inside subjects, so they are checked to be one safe subject token.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest identifier accepted; it also bounds container names and hostnames built from it.
pub const MAX_ID_LEN: usize = 64;

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: use 1 to {MAX_ID_LEN} characters from A-Z a-z 0-9 _ -")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
}

fn check_token(kind: &'static str, value: &str) -> Result<(), InvalidId> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidId {
            kind,
            value: value.chars().take(MAX_ID_LEN + 8).collect(),
        })
    }
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `value` and wraps it.
            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidId> {
                let value = value.into();
                check_token($kind, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(value: String) -> Result<Self, InvalidId> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(value: &str) -> Result<Self, InvalidId> {
                Self::parse(value)
            }
        }
    };
}

token_id!(
    /// A runtime node's id, such as `docker-local`: the last token of its command subjects.
    NodeId,
    "node id"
);
token_id!(
    /// A session's id (the gateway makes UUIDv7s); names its container `sandbox-<id>`.
    SessionId,
    "session id"
);
token_id!(
    /// An execution's id (the gateway makes UUIDv7s); a token of its event subjects.
    ExecutionId,
    "execution id"
);

const CONTAINER_NAME_PREFIX: &str = "sandbox-";

impl SessionId {
    /// The name of the one container a session may have; Docker's name uniqueness is what makes
    /// container creation idempotent.
    pub fn container_name(&self) -> String {
        format!("{CONTAINER_NAME_PREFIX}{}", self.0)
    }

    /// The session a container named by [`SessionId::container_name`] belongs to (Docker shows
    /// names with a leading `/`).
    pub fn from_container_name(name: &str) -> Option<Self> {
        let name = name.strip_prefix('/').unwrap_or(name);
        Self::parse(name.strip_prefix(CONTAINER_NAME_PREFIX)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_subject_safe_tokens() {
        assert!(NodeId::parse("docker-local").is_ok());
        assert!(NodeId::parse("node_7-A").is_ok());
        assert!(SessionId::parse("0193a1b2-7c4d-7e8f-9a0b-1c2d3e4f5a6b").is_ok());
    }

    #[test]
    fn refuses_what_would_break_a_subject() {
        for bad in [
            "",
            "a.b",
            "a b",
            "*",
            ">",
            "a/b",
            "ü",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            let err = NodeId::parse(bad).expect_err(bad);
            assert_eq!(err.kind, "node id");
        }
    }

    #[test]
    fn container_name_is_derived_from_the_session() {
        let id = SessionId::parse("abc").expect("valid");
        assert_eq!(id.container_name(), "sandbox-abc");
        assert_eq!(SessionId::from_container_name("/sandbox-abc"), Some(id));
        assert_eq!(SessionId::from_container_name("other-abc"), None);
        assert_eq!(SessionId::from_container_name("sandbox-a.b"), None);
    }
}
