//! Files of a session under `/api/v1/sessions/{id}/files`: upload, download, list, delete. Data
//! moves in chunks of [`CHUNK_BYTES`], one NATS request each, so no hop holds a whole file and a
//! slow side slows the other down instead of filling memory.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use messages::NodeCommand;
use messages::api::sessions::GetSession;
use messages::files::{
    AbortUpload, CHUNK_BYTES, DeleteFile, FileChunk, FileDeleted, FileListing, ListFiles,
    ReadFileChunk, WorkspacePath, WriteFileChunk,
};
use messages::session::SessionStatus;
use messages::{ErrorCode, NodeId, SessionId};
use serde::Deserialize;
use service_kit::bus::{self, BusError};

use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::state::AppState;

/// The session's node, if the session runs; 404 or 409 otherwise.
async fn running_session_node(state: &AppState, id: &str) -> Result<(SessionId, NodeId), ApiError> {
    let session_id = SessionId::parse(id).map_err(|_| ApiError::not_found("session", id))?;
    let request = GetSession {
        session_id: session_id.clone(),
    };
    let session = ApiError::found(
        "session",
        id,
        bus::api_request(&state.nats, &request, state.request_timeout).await,
    )?;
    match (session.status, session.runtime_node) {
        (SessionStatus::Running, Some(node)) => Ok((session_id, node)),
        (status, _) => Err(ApiError::from_code(
            ErrorCode::Conflict,
            format!("session '{id}' is {status}; its files are reachable only while it runs"),
        )),
    }
}

fn parse_path(path: &str) -> Result<WorkspacePath, ApiError> {
    WorkspacePath::parse(path).map_err(|error| {
        ApiError::invalid(StatusCode::BAD_REQUEST, format!("path {path:?}: {error}"))
    })
}

/// A path that names a file (not `/workspace` itself).
fn parse_file_path(path: &str) -> Result<WorkspacePath, ApiError> {
    let path = parse_path(path)?;
    if path.is_root() {
        return Err(ApiError::invalid(
            StatusCode::BAD_REQUEST,
            "the path must name a file inside /workspace",
        ));
    }
    Ok(path)
}

/// Sends one file command to the session's node. The node refuses bad paths (a symlink out of
/// the workspace, a folder where a file is expected) as invalid: for a path in the URL, a 400.
async fn ask_node<C: NodeCommand>(
    state: &AppState,
    node: &NodeId,
    command: &C,
) -> Result<C::Response, ApiError> {
    bus::node_request(&state.nats, node, command, state.request_timeout)
        .await
        .map_err(|error| match error {
            BusError::Remote(body) if body.code == ErrorCode::InvalidRequest => {
                ApiError::invalid(StatusCode::BAD_REQUEST, body.message)
            }
            other => other.into(),
        })
}

/// `PUT /api/v1/sessions/{id}/files/{path}`: the body becomes `/workspace/{path}`, replacing a
/// file there; missing folders are made. The file appears whole or not at all. The body is the
/// file's bytes as they are (whatever its content type: `curl --data-binary` labels them
/// form-encoded), or a `multipart/form-data` form (what `curl -F file=@x` sends) whose `file`
/// field (or first file field) is the file, read as it streams: the form itself is never
/// stored.
#[tracing::instrument(name = "gateway.upload_file", skip_all, fields(session_id = %id, path = %path))]
pub(crate) async fn upload(
    State(state): State<AppState>,
    ApiPath((id, path)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let path = parse_file_path(&path)?;
    let limit = state.max_file_bytes;
    let encoding = upload_encoding(&headers)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if encoding == UploadEncoding::Raw && declared.is_some_and(|length| length > limit) {
        return Err(too_large(limit));
    }
    let (session_id, node) = running_session_node(&state, &id).await?;
    let upload_id = uuid::Uuid::now_v7().simple().to_string();
    let mut upload = Upload {
        state: &state,
        node: &node,
        chunk: WriteFileChunk {
            session_id,
            path,
            upload_id,
            offset: 0,
            data: Vec::with_capacity(CHUNK_BYTES),
            last: false,
        },
    };
    let sent = match encoding {
        UploadEncoding::Raw => upload.send(body.into_data_stream(), limit).await,
        UploadEncoding::Multipart(boundary) => {
            let mut form = multer::Multipart::new(body.into_data_stream(), boundary);
            match file_field(&mut form).await {
                Ok(field) => upload.send(field, limit).await,
                Err(error) => Err(error),
            }
        }
    };
    match sent {
        Ok(entry) => Ok((StatusCode::CREATED, Json(entry)).into_response()),
        Err(error) => {
            upload.abort().await;
            Err(error)
        }
    }
}

/// How an upload's body carries the file.
#[derive(Debug, PartialEq, Eq)]
enum UploadEncoding {
    /// The bytes of the file, as they are (any content type but multipart).
    Raw,
    /// A `multipart/form-data` form with this boundary.
    Multipart(String),
}

/// The body's encoding from its content type.
fn upload_encoding(headers: &HeaderMap) -> Result<UploadEncoding, ApiError> {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return Ok(UploadEncoding::Raw);
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence != "multipart/form-data" {
        return Ok(UploadEncoding::Raw);
    }
    multer::parse_boundary(content_type)
        .map(UploadEncoding::Multipart)
        .map_err(|error| {
            ApiError::invalid(
                StatusCode::BAD_REQUEST,
                format!("a multipart/form-data body needs its boundary: {error}"),
            )
        })
}

/// The form's file: its field named `file`, else its first field with a file name.
async fn file_field(
    form: &mut multer::Multipart<'static>,
) -> Result<multer::Field<'static>, ApiError> {
    let unreadable = |error: multer::Error| {
        ApiError::invalid(
            StatusCode::BAD_REQUEST,
            format!("reading the multipart form: {error}"),
        )
    };
    while let Some(field) = form.next_field().await.map_err(unreadable)? {
        if field.name() == Some("file") || field.file_name().is_some() {
            return Ok(field);
        }
    }
    Err(ApiError::invalid(
        StatusCode::UNPROCESSABLE_ENTITY,
        "the multipart form has no file: send it in a field named file (curl -F file=@FILE)",
    ))
}

fn too_large(limit: u64) -> ApiError {
    ApiError::rejected(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("files may be at most {limit} bytes"),
    )
}

/// One upload in progress: the chunk being filled and where it goes.
struct Upload<'a> {
    state: &'a AppState,
    node: &'a NodeId,
    chunk: WriteFileChunk,
}

impl Upload<'_> {
    /// Sends the file's bytes as they arrive, one chunk per request, then the last chunk.
    async fn send<E: std::fmt::Display>(
        &mut self,
        mut data: impl futures::Stream<Item = Result<Bytes, E>> + Unpin,
        limit: u64,
    ) -> Result<messages::files::FileEntry, ApiError> {
        let mut received: u64 = 0;
        while let Some(frame) = data.next().await {
            let mut bytes: Bytes = frame.map_err(|error| {
                ApiError::invalid(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body: {error}"),
                )
            })?;
            received += bytes.len() as u64;
            if received > limit {
                return Err(too_large(limit));
            }
            while !bytes.is_empty() {
                let room = CHUNK_BYTES - self.chunk.data.len();
                let part = bytes.split_to(room.min(bytes.len()));
                self.chunk.data.extend_from_slice(&part);
                if self.chunk.data.len() == CHUNK_BYTES {
                    self.send_chunk(false).await?;
                }
            }
        }
        let progress = self.send_chunk(true).await?;
        progress.entry.ok_or_else(|| {
            ApiError::from_code(
                ErrorCode::RuntimeError,
                "the node did not describe the file",
            )
        })
    }

    async fn send_chunk(
        &mut self,
        last: bool,
    ) -> Result<messages::files::FileWriteProgress, ApiError> {
        self.chunk.last = last;
        let progress = ask_node(self.state, self.node, &self.chunk).await?;
        self.chunk.offset += self.chunk.data.len() as u64;
        self.chunk.data.clear();
        Ok(progress)
    }

    /// Drops the temporary file of an upload that did not finish. Best effort: the node also
    /// loses it with the session.
    async fn abort(&self) {
        let command = AbortUpload {
            session_id: self.chunk.session_id.clone(),
            path: self.chunk.path.clone(),
            upload_id: self.chunk.upload_id.clone(),
        };
        if let Err(error) = ask_node(self.state, self.node, &command).await {
            tracing::warn!(error = %error.message, "could not drop an unfinished upload");
        }
    }
}

/// `GET /api/v1/sessions/{id}/files/{path}`: the file's bytes, streamed as they are read.
#[tracing::instrument(name = "gateway.download_file", skip_all, fields(session_id = %id, path = %path))]
pub(crate) async fn download(
    State(state): State<AppState>,
    ApiPath((id, path)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let path = parse_file_path(&path)?;
    let (session_id, node) = running_session_node(&state, &id).await?;
    let mut request = ReadFileChunk {
        session_id,
        path,
        offset: 0,
        length: u32::try_from(CHUNK_BYTES).unwrap_or(u32::MAX),
    };
    // The first chunk is read before answering, so a missing file is a 404, not a broken body.
    let first: FileChunk = ask_node(&state, &node, &request).await?;
    // The length is fixed by the first read (it is the Content-Length): a file that grows
    // meanwhile is cut there; one that shrinks ends the body with an error, never short.
    let size = first.size;
    let first_bytes = Bytes::from(within_size(first.data, 0, size));
    request.offset = first_bytes.len() as u64;
    if request.offset < size && (first.eof || first_bytes.is_empty()) {
        return Err(ApiError::from_code(
            ErrorCode::Conflict,
            "the file shrank while it was being read",
        ));
    }
    let done = request.offset >= size;
    let rest = futures::stream::unfold(
        (state, node, request, done),
        move |(state, node, mut request, done)| async move {
            if done {
                return None;
            }
            match ask_node(&state, &node, &request).await {
                Ok(chunk) => {
                    let data = within_size(chunk.data, request.offset, size);
                    if data.is_empty() {
                        let shrank = std::io::Error::other("the file shrank while it was read");
                        return Some((Err(shrank), (state, node, request, true)));
                    }
                    request.offset += data.len() as u64;
                    let done = request.offset >= size;
                    Some((Ok(Bytes::from(data)), (state, node, request, done)))
                }
                Err(error) => Some((
                    Err(std::io::Error::other(error.message)),
                    (state, node, request, true),
                )),
            }
        },
    );
    let body =
        futures::stream::once(async move { Ok::<_, std::io::Error>(first_bytes) }).chain(rest);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// `data`, read at `offset`, cut to what lies before `size`.
fn within_size(mut data: Vec<u8>, offset: u64, size: u64) -> Vec<u8> {
    let remaining = usize::try_from(size.saturating_sub(offset)).unwrap_or(usize::MAX);
    data.truncate(remaining);
    data
}

/// The query of `GET /api/v1/sessions/{id}/files`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    path: String,
}

/// `GET /api/v1/sessions/{id}/files?path=dir`: a folder's entries (`/workspace` without a path).
#[tracing::instrument(name = "gateway.list_files", skip_all, fields(session_id = %id))]
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<FileListing>, ApiError> {
    let path = parse_path(&query.path)?;
    let (session_id, node) = running_session_node(&state, &id).await?;
    Ok(Json(
        ask_node(&state, &node, &ListFiles { session_id, path }).await?,
    ))
}

/// `DELETE /api/v1/sessions/{id}/files/{path}`: a file, or a folder with its contents.
#[tracing::instrument(name = "gateway.delete_file", skip_all, fields(session_id = %id, path = %path))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    ApiPath((id, path)): ApiPath<(String, String)>,
) -> Result<Json<FileDeleted>, ApiError> {
    let path = parse_file_path(&path)?;
    let (session_id, node) = running_session_node(&state, &id).await?;
    Ok(Json(
        ask_node(&state, &node, &DeleteFile { session_id, path }).await?,
    ))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_type(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).expect("a header value"),
        );
        headers
    }

    #[test]
    fn uploads_are_raw_bytes_or_multipart() {
        assert_eq!(upload_encoding(&HeaderMap::new()), Ok(UploadEncoding::Raw));
        assert_eq!(
            upload_encoding(&with_type("application/octet-stream")),
            Ok(UploadEncoding::Raw)
        );
        assert_eq!(
            upload_encoding(&with_type("Multipart/Form-Data; boundary=xyz")),
            Ok(UploadEncoding::Multipart("xyz".to_owned()))
        );
        // What `curl --data-binary` sends: the file's bytes, however labelled.
        assert_eq!(
            upload_encoding(&with_type("application/x-www-form-urlencoded")),
            Ok(UploadEncoding::Raw)
        );
        let no_boundary = upload_encoding(&with_type("multipart/form-data")).expect_err("refused");
        assert_eq!(no_boundary.status, StatusCode::BAD_REQUEST);
    }
}
