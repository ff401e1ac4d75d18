//! `GET /api/v1/executions/{id}/stream`: a run's output as Server-Sent Events, from its first
//! byte whenever the client connects (replayed from the EXECUTIONS stream), then one `result`
//! event with the recorded execution.

use std::convert::Infallible;
use std::time::Duration;

use async_nats::Subscriber;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt as _};
use messages::execution::{Execution, ExecutionOutput, OutputStream};
use messages::{ExecutionId, subjects};
use service_kit::bus;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::executions::{
    fetch, next_final, parse_execution_id, run_wait, subscribe_status, wait_for_result,
};
use crate::extract::ApiPath;
use crate::state::AppState;

/// How long a stream keeps relaying output after the run's result was recorded.
const RECORDED_DRAIN: Duration = Duration::from_secs(1);
/// How many events a stream buffers for a slow client before it waits for it.
const STREAM_BUFFER: usize = 64;

/// `GET /api/v1/executions/{id}/stream`: `stdout` and `stderr` events as the program writes,
/// from its first byte whenever the client connects, then one `result` event with the recorded
/// execution. A run that has ended is replayed from its record.
#[tracing::instrument(name = "gateway.stream_execution", skip_all, fields(execution_id = %id))]
pub(crate) async fn stream(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let execution_id = parse_execution_id(&id)?;
    // Subscribed before reading the record, so the recorded result cannot slip past.
    let results = subscribe_status(&state, &execution_id).await?;
    let execution = fetch(&state, &execution_id).await?;
    let (events, receiver) = mpsc::channel(STREAM_BUFFER);
    if execution.status.is_final() {
        tokio::spawn(replay_record(execution, events));
    } else {
        let events_consumer = output_consumer(&state, &execution_id).await?;
        tokio::spawn(relay_live(
            state,
            execution,
            events_consumer,
            results,
            events,
        ));
    }
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (Ok(event), receiver))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// An ordered replay of the run's events from the EXECUTIONS stream, from the first one.
async fn output_consumer(
    state: &AppState,
    execution_id: &ExecutionId,
) -> Result<Ordered, ApiError> {
    let stream_name = subjects::executions_stream();
    let stream = state
        .jetstream
        .get_stream(stream_name)
        .await
        .map_err(|error| ApiError::bus_failure(stream_name, &error))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subjects::execution_events(execution_id),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|error| ApiError::bus_failure(stream_name, &error))?;
    consumer
        .messages()
        .await
        .map_err(|error| ApiError::bus_failure(stream_name, &error))
}

async fn replay_record(execution: Execution, events: mpsc::Sender<Event>) {
    for (stream, text) in [
        (OutputStream::Stdout, &execution.stdout),
        (OutputStream::Stderr, &execution.stderr),
    ] {
        if !text.is_empty() && events.send(output_event(stream, text)).await.is_err() {
            return;
        }
    }
    let _ = events.send(result_event(&execution)).await;
}

/// Forwards output as it is published until the node's result shows up, then the recorded
/// result. Ends early when the client goes away.
async fn relay_live(
    state: AppState,
    execution: Execution,
    mut events_consumer: Ordered,
    mut results: Subscriber,
    events: mpsc::Sender<Event>,
) {
    let deadline = tokio::time::Instant::now() + run_wait(execution.timeout_secs);
    let mut end = deadline;
    // A result recorded without the node's (the callback's, or the overdue sweep's) ends the
    // stream too, after a moment for output still on its way.
    let mut recorded = None;
    let mut text = [Utf8Tail::default(), Utf8Tail::default()];
    let mut next_seq = 0;
    loop {
        let message = tokio::select! {
            message = events_consumer.next() => message,
            announced = next_final(&mut results), if recorded.is_none() => {
                recorded = announced;
                end = end.min(tokio::time::Instant::now() + RECORDED_DRAIN);
                continue;
            }
            () = tokio::time::sleep_until(end) => break,
            () = state.cancel.cancelled() => break,
            () = events.closed() => return,
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                tracing::warn!(%error, "reading execution events failed; ending the live part");
                break;
            }
            None => break,
        };
        if message.subject.ends_with(".result") {
            break;
        }
        let output = match bus::decode_message::<ExecutionOutput>(&message) {
            Ok(output) => output,
            Err(error) => {
                tracing::warn!(%error, "undecodable execution output; skipped");
                continue;
            }
        };
        // The ordered consumer already delivers in order; a repeat would be a node's retry.
        if output.seq < next_seq {
            continue;
        }
        next_seq = output.seq + 1;
        let tail = &mut text[usize::from(output.stream == OutputStream::Stderr)];
        let chunk = tail.push(&output.data);
        if !chunk.is_empty()
            && events
                .send(output_event(output.stream, &chunk))
                .await
                .is_err()
        {
            return;
        }
    }
    for (stream, tail) in [OutputStream::Stdout, OutputStream::Stderr]
        .into_iter()
        .zip(&mut text)
    {
        let rest = tail.finish();
        if !rest.is_empty() && events.send(output_event(stream, &rest)).await.is_err() {
            return;
        }
    }
    let final_state = match recorded {
        Some(execution) => execution,
        // The node's result is out; the recorded one follows within moments.
        None => {
            let short_deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            wait_for_result(&state, &execution.id, results, deadline.min(short_deadline))
                .await
                .unwrap_or(execution)
        }
    };
    let _ = events.send(result_event(&final_state)).await;
}

fn output_event(stream: OutputStream, text: &str) -> Event {
    Event::default()
        .event(stream.as_str())
        .json_data(serde_json::json!({ "data": text }))
        .unwrap_or_else(|_| Event::default().event(stream.as_str()).data(text))
}

fn result_event(execution: &Execution) -> Event {
    Event::default()
        .event("result")
        .json_data(execution)
        .unwrap_or_else(|error| Event::default().event("error").data(error.to_string()))
}

/// Turns a stream's bytes into text without breaking a character that straddles two chunks: an
/// incomplete UTF-8 sequence at the end of a chunk waits for the next one.
#[derive(Debug, Default)]
struct Utf8Tail {
    pending: Vec<u8>,
}

impl Utf8Tail {
    fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let complete = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // `error_len() == None`: the input ended inside a character; keep that part.
            Err(error) if error.error_len().is_none() => error.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let rest = self.pending.split_off(complete);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }

    /// What is left at the end: an incomplete character, as a replacement character.
    fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_chunks_is_kept_whole() {
        let mut tail = Utf8Tail::default();
        let text = "é€!".as_bytes();
        assert_eq!(tail.push(&text[..1]), "");
        assert_eq!(tail.push(&text[1..3]), "é");
        assert_eq!(tail.push(&text[3..]), "€!");
        assert_eq!(tail.push(&[0xff, b'a']), "\u{fffd}a");
    }
}
