//! Logs through `tracing`, and OpenTelemetry traces exported over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (nothing is exported otherwise).

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Flushes and stops the exporter when the service ends.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Sends the spans still buffered. Call it last, after the service's tasks have ended.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("telemetry: flushing spans failed: {error}");
        }
    }
}

/// W3C trace context in NATS headers; installed by [`init`], and by tests that set up their own
/// subscriber.
pub fn install_propagator() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

/// Sets up logging (`RUST_LOG`, default `info`; `LOG_FORMAT=json` for JSON lines) and, when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, span export under `service_name`.
pub fn init(service_name: &'static str) -> anyhow::Result<Telemetry> {
    install_propagator();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|format| format == "json");
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };

    // Spans always get trace ids, so every message carries a trace context that other parts
    // (and other tracing systems) can continue; they leave the process only with an endpoint.
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name)
        .build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    let exporting = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .is_ok_and(|endpoint| !endpoint.trim().is_empty());
    if exporting {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .context("building the OTLP span exporter")?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let otel_layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service_name));

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .context("installing the tracing subscriber")?;
    Ok(Telemetry { provider })
}
