//! One trace spans client -> gateway -> scheduler -> node daemon: the gateway continues the
//! client's `traceparent`, and the trace context rides in NATS headers.
//! Its own test binary, because it installs the process-wide tracing subscriber.

mod common;

use std::time::Duration;

use common::{System, require_executor_image};
use opentelemetry::trace::{TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt as _;

fn find<'a>(spans: &'a [SpanData], name: &str) -> Option<&'a SpanData> {
    spans.iter().find(|span| span.name == name)
}

#[tokio::test]
async fn gateway_scheduler_and_node_spans_share_one_trace() {
    require_executor_image();
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    service_kit::telemetry::install_propagator();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("end-to-end")));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let system = System::with_node().await;
    // The client's own trace, as a W3C traceparent.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = system
        .http
        .post(system.url("/api/v1/sessions"))
        .header(
            "traceparent",
            format!("00-{client_trace}-00f067aa0ba902b7-01"),
        )
        .json(&json!({"template_id": "python-basic"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 201);

    let names = [
        "gateway.create_session",
        "scheduler.place_session",
        "node.create_container",
    ];
    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = exporter.get_finished_spans().expect("spans readable");
        if names.iter().all(|name| find(&spans, name).is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let [gateway, scheduler, node] = names.map(|name| {
        find(&spans, name).unwrap_or_else(|| panic!("no span named {name} was recorded"))
    });
    let trace_id = gateway.span_context.trace_id();
    assert_eq!(
        trace_id,
        TraceId::from_hex(client_trace).expect("hex"),
        "the gateway did not continue the client's trace"
    );
    assert_eq!(scheduler.span_context.trace_id(), trace_id);
    assert_eq!(node.span_context.trace_id(), trace_id);
    // Each hop is the child of the one before it, across NATS.
    assert_eq!(scheduler.parent_span_id, gateway.span_context.span_id());
    assert_eq!(node.parent_span_id, scheduler.span_context.span_id());
}
