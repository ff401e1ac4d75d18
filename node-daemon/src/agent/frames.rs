//! What the executor agent writes on its stdout (PROTOCOL.md, Agent -> daemon): lines bounded by
//! [`LineSplitter`], each parsed and checked into a [`Frame`]. Pure, so every rule is tested here;
//! everything the agent says is untrusted (it shares the sandbox with the user's code).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::BytesMut;
use messages::ExecutionId;
use messages::execution::OutputStream;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The longest line either side writes, newline included (PROTOCOL.md, Framing).
pub(crate) const MAX_LINE_BYTES: usize = 1 << 20;
/// The most of an agent's error message passed on.
const MAX_MESSAGE_BYTES: usize = 1024;

/// The error codes of an agent's `reply` with `ok: false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Refusal {
    Invalid,
    NotFound,
    PathEscape,
    IsDirectory,
    NotDirectory,
    TooLarge,
    Io,
    #[serde(other)]
    Other,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Invalid => "invalid request",
            Refusal::NotFound => "not found",
            Refusal::PathEscape => "path escape",
            Refusal::IsDirectory => "is a directory",
            Refusal::NotDirectory => "not a directory",
            Refusal::TooLarge => "too large",
            Refusal::Io => "I/O error",
            Refusal::Other => "refused",
        })
    }
}

/// An agent's `result` frame, fields as the agent sent them (still to be judged).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct AgentResult {
    pub status: String,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub signal: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub state_lost: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub return_value: Option<String>,
    #[serde(default)]
    pub truncated_stdout: bool,
    #[serde(default)]
    pub truncated_stderr: bool,
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// A `reply` that is not a success: refused by the agent, or not a reply one can read (its
/// waiter is told at once rather than left to time out).
#[derive(Debug)]
pub(crate) enum ReplyFault {
    Refused { kind: Refusal, message: String },
    Malformed(String),
}

/// A `reply`'s other fields, or why there are none.
pub(crate) type ReplyOutcome = Result<Map<String, Value>, ReplyFault>;

/// One frame the agent sent.
#[derive(Debug)]
pub(crate) enum Frame {
    Hello,
    Out {
        id: ExecutionId,
        stream: OutputStream,
        data: Vec<u8>,
    },
    Result {
        id: ExecutionId,
        result: AgentResult,
    },
    Reply {
        req: u64,
        outcome: ReplyOutcome,
    },
}

#[derive(Deserialize)]
struct OutFrame {
    id: ExecutionId,
    stream: OutputStream,
    data: String,
}

#[derive(Deserialize)]
struct ResultFrame {
    id: ExecutionId,
    #[serde(flatten)]
    result: AgentResult,
}

#[derive(Deserialize)]
struct RefusalBody {
    code: Refusal,
    #[serde(default)]
    message: String,
}

/// Parses and checks one line; the error says what is wrong with it.
pub(crate) fn parse_frame(line: &[u8]) -> Result<Frame, String> {
    let Value::Object(mut fields) =
        serde_json::from_slice::<Value>(line).map_err(|error| error.to_string())?
    else {
        return Err("not a JSON object".to_owned());
    };
    let kind = fields.remove("t");
    let invalid = |error: serde_json::Error| error.to_string();
    match kind.as_ref().and_then(Value::as_str) {
        Some("hello") => Ok(Frame::Hello),
        Some("out") => {
            let out: OutFrame = serde_json::from_value(Value::Object(fields)).map_err(invalid)?;
            let data = BASE64
                .decode(out.data)
                .map_err(|error| format!("output data is not base64: {error}"))?;
            Ok(Frame::Out {
                id: out.id,
                stream: out.stream,
                data,
            })
        }
        Some("result") => {
            let frame: ResultFrame =
                serde_json::from_value(Value::Object(fields)).map_err(invalid)?;
            Ok(Frame::Result {
                id: frame.id,
                result: frame.result,
            })
        }
        Some("reply") => {
            let req = fields
                .remove("req")
                .and_then(|req| req.as_u64())
                .ok_or("a reply without a numeric req")?;
            let ok = fields.remove("ok").and_then(|ok| ok.as_bool());
            let outcome = match ok {
                Some(true) => Ok(fields),
                Some(false) => {
                    let body: RefusalBody = fields
                        .remove("error")
                        .map(serde_json::from_value)
                        .transpose()
                        .map_err(invalid)?
                        .ok_or("a refusal without an error")?;
                    Err(ReplyFault::Refused {
                        kind: body.code,
                        message: truncate(body.message, MAX_MESSAGE_BYTES),
                    })
                }
                None => Err(ReplyFault::Malformed("a reply without ok".to_owned())),
            };
            Ok(Frame::Reply { req, outcome })
        }
        _ => Err("not a known frame type".to_owned()),
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Splits a byte stream into lines of at most `max` bytes (newline included), dropping longer
/// ones as they come, so it never holds much more than `max` bytes.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    buffer: BytesMut,
    max: usize,
    /// How much of `buffer` is known to hold no newline.
    scanned: usize,
    /// Inside an over-long line: everything up to the next newline is dropped.
    discarding: bool,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            max,
            scanned: 0,
            discarding: false,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next complete line, without its newline.
    pub fn next_line(&mut self) -> Option<BytesMut> {
        loop {
            let newline = self.buffer[self.scanned..]
                .iter()
                .position(|&byte| byte == b'\n')
                .map(|position| self.scanned + position);
            let Some(newline) = newline else {
                if self.buffer.len() >= self.max {
                    if !self.discarding {
                        tracing::warn!(
                            max = self.max,
                            "dropping an over-long line from the executor agent"
                        );
                    }
                    self.discarding = true;
                    self.buffer.clear();
                }
                self.scanned = self.buffer.len();
                return None;
            };
            let mut line = self.buffer.split_to(newline + 1);
            self.scanned = 0;
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            if line.len() > self.max {
                tracing::warn!(
                    max = self.max,
                    "dropping an over-long line from the executor agent"
                );
                continue;
            }
            line.truncate(newline);
            return Some(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(splitter: &mut LineSplitter) -> Vec<String> {
        std::iter::from_fn(|| splitter.next_line())
            .map(|line| String::from_utf8_lossy(&line).into_owned())
            .collect()
    }

    #[test]
    fn lines_are_split_across_chunks_and_long_ones_dropped() {
        let mut splitter = LineSplitter::new(8);
        splitter.push(b"ab");
        assert!(lines(&mut splitter).is_empty());
        splitter.push(b"c\nd\n\n1234567");
        assert_eq!(lines(&mut splitter), ["abc", "d", ""]);
        // "1234567\n" is exactly 8 bytes: kept.
        splitter.push(b"\n");
        assert_eq!(lines(&mut splitter), ["1234567"]);
        // Nine bytes with the newline, arriving at once: dropped.
        splitter.push(b"12345678\nok\n");
        assert_eq!(lines(&mut splitter), ["ok"]);
        // Long without a newline yet: the buffer is cleared, the rest skipped up to the newline.
        splitter.push(b"0123456789abcdef");
        assert!(lines(&mut splitter).is_empty());
        assert!(splitter.buffer.is_empty());
        splitter.push(b"more\nnext\n");
        assert_eq!(lines(&mut splitter), ["next"]);
    }

    #[test]
    fn frames_are_checked() {
        let id = "e1";
        let out = format!(r#"{{"t":"out","id":"{id}","stream":"stdout","data":"NDIK"}}"#);
        match parse_frame(out.as_bytes()) {
            Ok(Frame::Out { id, stream, data }) => {
                assert_eq!(id.as_str(), "e1");
                assert_eq!(stream, OutputStream::Stdout);
                assert_eq!(data, b"42\n");
            }
            other => panic!("{other:?}"),
        }
        let refusal =
            br#"{"t":"reply","req":7,"ok":false,"error":{"code":"path_escape","message":"no"}}"#;
        match parse_frame(refusal) {
            Ok(Frame::Reply {
                req: 7,
                outcome:
                    Err(ReplyFault::Refused {
                        kind: Refusal::PathEscape,
                        ..
                    }),
            }) => {}
            other => panic!("{other:?}"),
        }
        match parse_frame(br#"{"t":"reply","req":8}"#) {
            Ok(Frame::Reply {
                req: 8,
                outcome: Err(ReplyFault::Malformed(_)),
            }) => {}
            other => panic!("{other:?}"),
        }
        for bad in [
            &br#"[1]"#[..],
            br#"{"t":"out","id":"a.b","stream":"stdout","data":""}"#,
            br#"{"t":"out","id":"e","stream":"stdin","data":""}"#,
            br#"{"t":"out","id":"e","stream":"stdout","data":"%%%"}"#,
            br#"{"t":"result","id":"e"}"#,
            br#"{"t":"reply","req":"x","ok":true}"#,
            br#"{"t":"nope"}"#,
            b"not json",
        ] {
            assert!(
                parse_frame(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("héllo".to_owned(), 2), "h");
        assert_eq!(truncate("abc".to_owned(), 5), "abc");
    }
}
