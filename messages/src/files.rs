//! Files in a session's `/workspace`: the path rule and the chunked commands that move files
//! between the gateway and the node, one bounded chunk per request so no hop holds a whole file.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::SessionId;

/// The most file data one request or reply carries.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// The longest path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// A path inside `/workspace`, checked lexically: relative, no `.` or `..` segment, no empty
/// segment, no NUL. The empty path is `/workspace` itself. Symlinks can only be judged where the
/// files are, so the executor agent checks the resolved path again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkspacePath(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPath {
    #[error("the path must be relative to /workspace, not absolute")]
    Absolute,
    #[error("the path must not contain '.' or '..' segments")]
    DotSegment,
    #[error("the path must not contain empty segments ('//')")]
    EmptySegment,
    #[error("the path must not contain NUL bytes")]
    Nul,
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
}

impl WorkspacePath {
    /// Checks `value`; one trailing `/` is allowed (a folder).
    pub fn parse(value: &str) -> Result<Self, InvalidPath> {
        if value.len() > MAX_PATH_BYTES {
            return Err(InvalidPath::TooLong);
        }
        if value.contains('\0') {
            return Err(InvalidPath::Nul);
        }
        if value.starts_with('/') {
            return Err(InvalidPath::Absolute);
        }
        let trimmed = value.strip_suffix('/').unwrap_or(value);
        if !trimmed.is_empty() {
            for segment in trimmed.split('/') {
                match segment {
                    "" => return Err(InvalidPath::EmptySegment),
                    "." | ".." => return Err(InvalidPath::DotSegment),
                    _ => {}
                }
            }
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// `/workspace` itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment (empty for the root).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }
}

impl TryFrom<String> for WorkspacePath {
    type Error = InvalidPath;
    fn try_from(value: String) -> Result<Self, InvalidPath> {
        Self::parse(&value)
    }
}

impl From<WorkspacePath> for String {
    fn from(path: WorkspacePath) -> String {
        path.0
    }
}

impl fmt::Display for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/workspace/{}", self.0)
    }
}

wire_enum! {
    /// What a folder entry is.
    pub enum FileKind ("file kind") {
        File = "file",
        Directory = "directory",
        Symlink = "symlink",
        Other = "other",
        #[serde(other)]
        Unknown = "unknown",
    }
}

/// One entry of a folder listing; also what an upload answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    /// Relative to `/workspace`.
    pub path: String,
    pub size: u64,
    pub kind: FileKind,
    pub modified_at: DateTime<Utc>,
}

/// `files.write`: one chunk of an upload. Chunks of one upload come in order; the first creates
/// the missing folders, the last (`last: true`) puts the file in place at once, replacing an old
/// one. Until then the data sits in a temporary file next to the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteFileChunk {
    pub session_id: SessionId,
    pub path: WorkspacePath,
    /// Names the upload's temporary file, so two uploads to one path do not mix.
    pub upload_id: String,
    pub offset: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub last: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileWriteProgress {
    /// Bytes of the upload received so far.
    pub received: u64,
    /// The finished file, after the last chunk.
    pub entry: Option<FileEntry>,
}

node_command!(WriteFileChunk => "files.write", FileWriteProgress);

/// `files.abort`: drop an unfinished upload's temporary file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbortUpload {
    pub session_id: SessionId,
    pub path: WorkspacePath,
    pub upload_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UploadAborted {}

node_command!(AbortUpload => "files.abort", UploadAborted);

/// `files.read`: up to `length` (at most [`CHUNK_BYTES`]) bytes from `offset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadFileChunk {
    pub session_id: SessionId,
    pub path: WorkspacePath,
    pub offset: u64,
    pub length: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileChunk {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// The whole file's size when this chunk was read.
    pub size: u64,
    pub eof: bool,
}

node_command!(ReadFileChunk => "files.read", FileChunk);

/// `files.list`: a folder's entries, sorted by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListFiles {
    pub session_id: SessionId,
    pub path: WorkspacePath,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileListing {
    pub path: String,
    pub entries: Vec<FileEntry>,
}

node_command!(ListFiles => "files.list", FileListing);

/// `files.delete`: a file, or a folder with everything in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteFile {
    pub session_id: SessionId,
    pub path: WorkspacePath,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDeleted {
    pub path: String,
}

node_command!(DeleteFile => "files.delete", FileDeleted);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        for (input, stored) in [
            ("data.csv", "data.csv"),
            ("a/b/c.txt", "a/b/c.txt"),
            ("dir/", "dir"),
            ("", ""),
            (".hidden", ".hidden"),
            ("a..b", "a..b"),
        ] {
            let path = WorkspacePath::parse(input).expect(input);
            assert_eq!(path.as_str(), stored);
        }
        assert!(WorkspacePath::parse("").expect("root").is_root());
        assert_eq!(
            WorkspacePath::parse("a/b.txt").expect("valid").file_name(),
            "b.txt"
        );
    }

    #[test]
    fn refuses_paths_that_could_leave_the_workspace() {
        for (input, error) in [
            ("/etc/passwd", InvalidPath::Absolute),
            ("../x", InvalidPath::DotSegment),
            ("a/../../x", InvalidPath::DotSegment),
            ("a/./b", InvalidPath::DotSegment),
            ("..", InvalidPath::DotSegment),
            ("a//b", InvalidPath::EmptySegment),
            ("a\0b", InvalidPath::Nul),
        ] {
            assert_eq!(WorkspacePath::parse(input), Err(error), "{input:?}");
        }
        assert_eq!(
            WorkspacePath::parse(&"a".repeat(MAX_PATH_BYTES + 1)),
            Err(InvalidPath::TooLong)
        );
    }
}
