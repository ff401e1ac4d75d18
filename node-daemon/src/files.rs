//! The `files.*` commands: chunked uploads and downloads, listings and deletes in a session's
//! `/workspace`, each one request to the session's executor agent. Paths were checked lexically
//! on decoding; the agent checks them again against the real files (symlinks).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use messages::files::{
    AbortUpload, CHUNK_BYTES, DeleteFile, FileChunk, FileDeleted, FileListing, FileWriteProgress,
    ListFiles, ReadFileChunk, UploadAborted, WorkspacePath, WriteFileChunk,
};
use messages::{ErrorBody, SessionId};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::agent::AgentError;
use crate::containers;
use crate::node::Node;
use crate::serve::Command;

/// The longest upload id: it becomes part of a temporary file's name.
const MAX_UPLOAD_ID_LEN: usize = 64;

fn span(verb: &'static str, session_id: &SessionId, path: &WorkspacePath) -> tracing::Span {
    tracing::info_span!("node.files", verb, session_id = %session_id, path = path.as_str())
}

impl Command for WriteFileChunk {
    fn span(&self) -> tracing::Span {
        span("write", &self.session_id, &self.path)
    }

    fn session_id(&self) -> &SessionId {
        &self.session_id
    }

    const LOCKS_WHOLE_COMMAND: bool = false;

    async fn run(self, node: &Node) -> Result<FileWriteProgress, ErrorBody> {
        if self.data.len() > CHUNK_BYTES {
            return Err(ErrorBody::invalid(format!(
                "a chunk carries at most {CHUNK_BYTES} bytes, not {}",
                self.data.len()
            )));
        }
        check_upload_id(&self.upload_id)?;
        let mut reply = ask(
            node,
            &self.session_id,
            "file_write",
            [
                ("path", Value::from(self.path.as_str())),
                ("upload", Value::from(self.upload_id)),
                ("offset", Value::from(self.offset)),
                ("data", Value::from(BASE64.encode(&self.data))),
                ("last", Value::from(self.last)),
            ],
        )
        .await?;
        let received = field(&mut reply, "received")?;
        let entry = if self.last {
            Some(field(&mut reply, "entry")?)
        } else {
            None
        };
        Ok(FileWriteProgress { received, entry })
    }
}

impl Command for AbortUpload {
    fn span(&self) -> tracing::Span {
        span("abort", &self.session_id, &self.path)
    }

    fn session_id(&self) -> &SessionId {
        &self.session_id
    }

    const LOCKS_WHOLE_COMMAND: bool = false;

    async fn run(self, node: &Node) -> Result<UploadAborted, ErrorBody> {
        check_upload_id(&self.upload_id)?;
        ask(
            node,
            &self.session_id,
            "file_abort",
            [
                ("path", Value::from(self.path.as_str())),
                ("upload", Value::from(self.upload_id)),
            ],
        )
        .await?;
        Ok(UploadAborted {})
    }
}

impl Command for ReadFileChunk {
    fn span(&self) -> tracing::Span {
        span("read", &self.session_id, &self.path)
    }

    fn session_id(&self) -> &SessionId {
        &self.session_id
    }

    const LOCKS_WHOLE_COMMAND: bool = false;

    async fn run(self, node: &Node) -> Result<FileChunk, ErrorBody> {
        let length =
            usize::try_from(self.length).map_or(CHUNK_BYTES, |length| length.min(CHUNK_BYTES));
        let mut reply = ask(
            node,
            &self.session_id,
            "file_read",
            [
                ("path", Value::from(self.path.as_str())),
                ("offset", Value::from(self.offset)),
                ("length", Value::from(length)),
            ],
        )
        .await?;
        let encoded: String = field(&mut reply, "data")?;
        let data = BASE64
            .decode(encoded)
            .map_err(|error| bad_reply(format!("data is not base64: {error}")))?;
        if data.len() > length {
            return Err(bad_reply(format!(
                "{} bytes read where at most {length} were asked for",
                data.len()
            )));
        }
        Ok(FileChunk {
            data,
            size: field(&mut reply, "size")?,
            eof: field(&mut reply, "eof")?,
        })
    }
}

impl Command for ListFiles {
    fn span(&self) -> tracing::Span {
        span("list", &self.session_id, &self.path)
    }

    fn session_id(&self) -> &SessionId {
        &self.session_id
    }

    const LOCKS_WHOLE_COMMAND: bool = false;

    async fn run(self, node: &Node) -> Result<FileListing, ErrorBody> {
        let mut reply = ask(
            node,
            &self.session_id,
            "file_list",
            [("path", Value::from(self.path.as_str()))],
        )
        .await?;
        // The agent reports entries in the shape of `FileEntry` (PROTOCOL.md).
        Ok(FileListing {
            path: self.path.into(),
            entries: field(&mut reply, "entries")?,
        })
    }
}

impl Command for DeleteFile {
    fn span(&self) -> tracing::Span {
        span("delete", &self.session_id, &self.path)
    }

    fn session_id(&self) -> &SessionId {
        &self.session_id
    }

    const LOCKS_WHOLE_COMMAND: bool = false;

    async fn run(self, node: &Node) -> Result<FileDeleted, ErrorBody> {
        if self.path.is_root() {
            return Err(ErrorBody::invalid(
                "/workspace itself cannot be deleted".to_owned(),
            ));
        }
        ask(
            node,
            &self.session_id,
            "file_delete",
            [("path", Value::from(self.path.as_str()))],
        )
        .await?;
        Ok(FileDeleted {
            path: self.path.into(),
        })
    }
}

/// Sends `op` to the session's agent and returns the fields of its reply.
async fn ask<const N: usize>(
    node: &Node,
    session_id: &SessionId,
    op: &str,
    fields: [(&str, Value); N],
) -> Result<Map<String, Value>, ErrorBody> {
    let agent = containers::for_session(node, session_id).await?;
    let fields = fields
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    Ok(agent.request(op, fields).await?)
}

/// Takes field `name` of an agent's reply.
fn field<T: DeserializeOwned>(reply: &mut Map<String, Value>, name: &str) -> Result<T, ErrorBody> {
    let value = reply
        .remove(name)
        .ok_or_else(|| bad_reply(format!("no {name}")))?;
    serde_json::from_value(value).map_err(|error| bad_reply(format!("{name}: {error}")))
}

fn bad_reply(message: String) -> ErrorBody {
    AgentError::BadReply(message).into()
}

/// Upload ids name temporary files, so they are kept to a safe alphabet.
fn check_upload_id(upload_id: &str) -> Result<(), ErrorBody> {
    let ok = !upload_id.is_empty()
        && upload_id.len() <= MAX_UPLOAD_ID_LEN
        && upload_id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if ok {
        Ok(())
    } else {
        Err(ErrorBody::invalid(format!(
            "upload_id must be 1 to {MAX_UPLOAD_ID_LEN} characters from A-Z a-z 0-9 _ -"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_are_safe_names() {
        assert!(check_upload_id("u-1_A").is_ok());
        for bad in ["", "a/b", "..", &"x".repeat(65)] {
            assert!(check_upload_id(bad).is_err(), "{bad}");
        }
    }
}
