//! Logging and tracing set-up shared by every service.
//!
//! Logs: one JSON object per line by default (`PAYSTREAM_LOG_FORMAT=pretty` for humans),
//! filtered by `RUST_LOG` (default `info`). Traces: exported over OTLP with a batch exporter
//! (its own thread: a slow collector never blocks a request or a batch) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific variant) is set, over HTTP/protobuf or,
//! with `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`, gRPC. The standard `OTEL_*` variables (service name,
//! sampler and its argument, headers, timeouts) are honoured by the SDK. Without an endpoint no
//! tracer is installed at all, so tracing costs nothing. W3C trace context is the global
//! propagator, used for HTTP and Kafka headers alike.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes and shuts down the trace exporter when dropped: keep it alive until exit.
#[must_use = "dropping the guard shuts down trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("trace exporter shutdown failed: {e}");
            }
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()))
        && std::env::var("OTEL_TRACES_EXPORTER").map_or(true, |v| v != "none")
}

/// The OTLP transport named by `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or
/// `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Debug, PartialEq, Eq)]
enum OtlpProtocol {
    HttpProtobuf,
    Grpc,
}

fn otlp_protocol(traces: Option<&str>, general: Option<&str>) -> anyhow::Result<OtlpProtocol> {
    match traces.or(general).map(str::trim) {
        None | Some("") | Some("http/protobuf") => Ok(OtlpProtocol::HttpProtobuf),
        Some("grpc") => Ok(OtlpProtocol::Grpc),
        Some(other) => {
            anyhow::bail!("unsupported OTLP protocol `{other}` (use `http/protobuf` or `grpc`)")
        }
    }
}

fn span_exporter() -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    use opentelemetry_otlp::WithExportConfig as _;
    let protocol = otlp_protocol(
        std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .ok()
            .as_deref(),
        std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").ok().as_deref(),
    )?;
    let exporter = match protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build(),
        // tonic needs the Tokio runtime every service runs under (`#[tokio::main]`).
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build(),
    };
    exporter.with_context(|| format!("building the OTLP span exporter ({protocol:?})"))
}

/// Installs the global subscriber for `service` (the default `service.name`).
pub fn init(service: &str) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty = std::env::var("PAYSTREAM_LOG_FORMAT").is_ok_and(|v| v == "pretty");
    let fmt_layer = if pretty {
        tracing_subscriber::fmt::layer().with_target(false).boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .json()
            .event_format(ServiceJson {
                service: service.to_string(),
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    // Every enclosing span, innermost last (the current one alone would miss
                    // the record's context inside a nested span): a PSP call's log line
                    // carries the payment id, topic, partition and offset of its record.
                    .with_current_span(false)
                    .with_span_list(true),
            })
            .boxed()
    };

    let provider = if otlp_configured() {
        let exporter = span_exporter()?;
        let service_name =
            std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service_name).build())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        Some(provider)
    } else {
        None
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service.to_string())));

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .context("installing the tracing subscriber")?;
    Ok(TelemetryGuard { provider })
}

/// The JSON log line of `tracing-subscriber`, led by the service name and, when the event
/// happens inside a traced span, its trace and span ids, so logs join up with traces.
struct ServiceJson<F> {
    service: String,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for ServiceJson<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let Some(rest) = line.strip_prefix('{') else {
            return writer.write_str(&line);
        };
        // The inner formatter has released every span lock by now, so asking the tracing layer
        // for the current span's context cannot deadlock.
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let ids = span.span_context();
        write!(writer, "{{\"service\":{:?},", self.service)?;
        if ids.is_valid() {
            write!(
                writer,
                "\"trace_id\":\"{}\",\"span_id\":\"{}\",",
                ids.trace_id(),
                ids.span_id()
            )?;
        }
        writer.write_str(rest)
    }
}

/// Writes the current span's W3C trace context (`traceparent`, `tracestate`) into the headers
/// of an outgoing HTTP request, so the service called continues this trace. Writes nothing
/// when there is no sampled, exported span (no tracer installed).
pub fn inject_http_context(headers: &mut axum::http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HttpHeaders(headers))
    });
}

/// The W3C trace context an incoming HTTP request carries (empty when it has none): set it as
/// the server span's parent before entering that span.
pub fn extract_http_context(headers: &axum::http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HttpHeadersRef(headers)))
}

/// Makes `span`, a server span not yet entered, continue the trace an incoming HTTP request
/// carries; a request without `traceparent` (or no tracer installed) leaves it a root.
pub fn continue_http_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    // Fails only when no OpenTelemetry layer is installed or the span was entered already.
    let _ = span.set_parent(extract_http_context(headers));
}

struct HttpHeaders<'a>(&'a mut axum::http::HeaderMap);

impl opentelemetry::propagation::Injector for HttpHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(key.as_bytes()),
            axum::http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HttpHeadersRef<'a>(&'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HttpHeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Formats an error with its whole cause chain on one line, for logs and problem details.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_protocol_follows_the_standard_variables() {
        assert_eq!(
            otlp_protocol(None, None).unwrap(),
            OtlpProtocol::HttpProtobuf
        );
        assert_eq!(
            otlp_protocol(None, Some("grpc")).unwrap(),
            OtlpProtocol::Grpc
        );
        assert_eq!(
            otlp_protocol(Some("http/protobuf"), Some("grpc")).unwrap(),
            OtlpProtocol::HttpProtobuf,
            "the traces-specific variable wins"
        );
        assert!(otlp_protocol(Some("http/json"), None).is_err());
    }

    #[test]
    fn http_headers_carry_the_trace_context_both_ways() {
        use opentelemetry::trace::TraceContextExt as _;
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut incoming = axum::http::HeaderMap::new();
        incoming.insert("traceparent", traceparent.parse().unwrap());
        let cx = extract_http_context(&incoming);
        let span = cx.span();
        let ids = span.span_context();
        assert_eq!(
            ids.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(ids.span_id().to_string(), "00f067aa0ba902b7");
        assert!(ids.is_remote());

        let mut outgoing = axum::http::HeaderMap::new();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut HttpHeaders(&mut outgoing))
        });
        assert_eq!(outgoing["traceparent"], traceparent);
        // Without a span or tracer there is nothing to propagate.
        let mut none = axum::http::HeaderMap::new();
        inject_http_context(&mut none);
        assert!(none.get("traceparent").is_none());
    }
}
