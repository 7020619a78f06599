//! The CloudWatch Logs seam: the few calls the claim ledger makes (a log group, its streams,
//! a stream's first event, an atomic stream create, one event put), in the project's own types.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::date_time::{DateTime, Format};

use super::{Transient, aws_error};

/// The service's own clock, as the `Date` header of its last response tells it (RFC 9110
/// 6.6.1: the time the response was generated, second resolution), carried forward with this
/// machine's monotonic clock. Ages of claims are measured on it, never on the instance's wall
/// clock, which may be minutes off.
#[derive(Debug, Clone, Default)]
pub struct ServiceClock(Arc<Mutex<Option<(i64, Instant)>>>);

impl ServiceClock {
    /// A lower bound of the service's time now, milliseconds since the Unix epoch (the header
    /// is truncated to the second); None before any response carried a date.
    pub fn now_ms(&self) -> Option<i64> {
        self.0
            .lock()
            .unwrap()
            .map(|(ms, at)| ms + at.elapsed().as_millis() as i64)
    }

    fn saw(&self, date: &str) {
        let Ok(t) = DateTime::from_str(date, Format::HttpDate) else {
            return;
        };
        if let Ok(ms) = t.to_millis() {
            *self.0.lock().unwrap() = Some((ms, Instant::now()));
        }
    }
}

/// What CreateLogStream came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// This call made the stream.
    Made,
    /// The stream exists; `maybe_applied`: an earlier attempt of this call may have made it
    /// (its reply was lost), else another caller did.
    Existed { maybe_applied: bool },
}

/// Context of a failed CreateLogStream whose attempts may have made the stream.
#[derive(Debug, Clone, thiserror::Error)]
#[error("an attempt to create stream {0} may have been applied")]
pub struct MaybeMade(pub String);

/// Feeds every response's `Date` header to the [`ServiceClock`].
#[derive(Debug)]
struct DateHeader(ServiceClock);

impl Intercept for DateHeader {
    fn name(&self) -> &'static str {
        "ServiceClock"
    }

    fn read_after_transmit(
        &self,
        ctx: &BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(date) = ctx.response().headers().get("date") {
            self.0.saw(date);
        }
        Ok(())
    }
}

/// A log stream as DescribeLogStreams lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub name: String,
    /// Creation time, milliseconds since the Unix epoch (the service's clock).
    pub created_ms: Option<i64>,
    /// The first event's timestamp, when the service reports one: the stream holds events.
    pub first_event_ms: Option<i64>,
}

/// GetLogEvents pages read before a stream is given up on for this attempt.
const MAX_PAGES: usize = 100;

/// CloudWatch Logs, asked only what the claim ledger needs.
#[derive(Clone, Debug)]
pub struct Logs {
    client: aws_sdk_cloudwatchlogs::Client,
    clock: ServiceClock,
}

impl Logs {
    pub fn new(conf: &aws_config::SdkConfig) -> Logs {
        let clock = ServiceClock::default();
        let conf = aws_sdk_cloudwatchlogs::config::Builder::from(conf)
            .interceptor(DateHeader(clock.clone()))
            .build();
        Logs {
            client: aws_sdk_cloudwatchlogs::Client::from_conf(conf),
            clock,
        }
    }

    /// The service's clock, as its responses tell it.
    pub fn clock(&self) -> &ServiceClock {
        &self.clock
    }

    /// Creates the log group unless it exists; returns its retention in days, if it has a
    /// retention policy. A role that may not create groups (the operator made it beforehand)
    /// is fine as long as the group is there.
    pub async fn ensure_group(&self, group: &str) -> Result<Option<i32>> {
        let mut denied = None;
        match self
            .client
            .create_log_group()
            .log_group_name(group)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception()) => {}
            Err(e) if e.code() == Some("AccessDeniedException") => {
                tracing::debug!(group, "may not create the log group; looking for it");
                denied = Some(aws_error(e, &format!("creating log group {group}")));
            }
            Err(e) => return Err(aws_error(e, &format!("creating log group {group}"))),
        }
        let mut pages = self
            .client
            .describe_log_groups()
            .log_group_name_prefix(group)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(e, &format!("describing log group {group}")))?;
            if let Some(g) = page
                .log_groups()
                .iter()
                .find(|g| g.log_group_name() == Some(group))
            {
                return Ok(g.retention_in_days());
            }
        }
        match denied {
            Some(e) => Err(e.context(format!("the log group {group} does not exist"))),
            None => Ok(None),
        }
    }

    /// Every stream of `group` whose name starts with `prefix`, all pages.
    pub async fn streams(&self, group: &str, prefix: &str) -> Result<Vec<Stream>> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .describe_log_streams()
            .log_group_name(group)
            .log_stream_name_prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(e, &format!("listing streams of {group}")))?;
            out.extend(page.log_streams().iter().filter_map(|s| {
                Some(Stream {
                    name: s.log_stream_name()?.to_string(),
                    created_ms: s.creation_time(),
                    first_event_ms: s.first_event_timestamp(),
                })
            }));
        }
        Ok(out)
    }

    /// The message of the stream's first event, read from its head; `None` only once the
    /// stream is read to its end (the forward token comes back unchanged) without an event.
    /// An empty page alone proves nothing: "partially full or empty pages don't necessarily
    /// mean that pagination is finished" (GetLogEvents API reference; boto/boto3#3718).
    pub async fn first_message(&self, group: &str, stream: &str) -> Result<Option<String>> {
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .get_log_events()
                .log_group_name(group)
                .log_stream_name(stream)
                .start_from_head(true)
                .limit(1)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| aws_error(e, &format!("reading stream {stream}")))?;
            if let Some(m) = page.events().first().and_then(|e| e.message()) {
                return Ok(Some(m.to_string()));
            }
            let next = page.next_forward_token().map(str::to_string);
            if next.is_none() || next == token {
                return Ok(None);
            }
            token = next;
        }
        Err(Transient(anyhow::anyhow!(
            "reading stream {stream}: {MAX_PAGES} pages without an event or the end"
        ))
        .into())
    }

    /// Creates a stream: true if this call created it, false if it existed already.
    pub async fn create_stream(&self, group: &str, stream: &str) -> Result<Created> {
        use aws_sdk_cloudwatchlogs::error::SdkError;
        // The SDK's own retries are off for this call: whether an earlier attempt may have
        // been applied decides whether an existing stream may be our own, so every attempt's
        // outcome is seen here. A 4xx (throttling included) was not applied; a 5xx, a timeout
        // or a lost connection may have been.
        let mut maybe_applied = false;
        let mut backoff = crate::backoff::Backoff::new(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_millis(400),
            Instant::now() + std::time::Duration::from_secs(3),
        );
        loop {
            let sent = self
                .client
                .create_log_stream()
                .log_group_name(group)
                .log_stream_name(stream)
                .customize()
                .config_override(
                    aws_sdk_cloudwatchlogs::config::Builder::default()
                        .retry_config(aws_smithy_types::retry::RetryConfig::disabled()),
                )
                .send()
                .await;
            let e = match sent {
                Ok(_) => return Ok(Created::Made),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_already_exists_exception()) =>
                {
                    return Ok(Created::Existed { maybe_applied });
                }
                Err(e) => e,
            };
            maybe_applied |= match &e {
                SdkError::ServiceError(s) => s.raw().status().as_u16() >= 500,
                SdkError::ConstructionFailure(_) => false,
                _ => true,
            };
            let err = aws_error(e, &format!("creating stream {stream}"));
            if !super::is_transient(&err) || !backoff.wait().await {
                return Err(if maybe_applied {
                    err.context(MaybeMade(stream.to_string()))
                } else {
                    err
                });
            }
        }
    }

    /// One stream of `group`, if it exists.
    pub async fn stream(&self, group: &str, name: &str) -> Result<Option<Stream>> {
        Ok(self
            .streams(group, name)
            .await?
            .into_iter()
            .find(|s| s.name == name))
    }

    /// Puts one event with the given timestamp (milliseconds since the Unix epoch). Ok(None)
    /// when it was accepted; Ok(Some(why)) when the service answered 200 and still rejected it
    /// (`rejectedLogEventsInfo`: too old, too new or expired, PutLogEvents API reference).
    pub async fn put(
        &self,
        group: &str,
        stream: &str,
        timestamp_ms: i64,
        message: &str,
    ) -> Result<Option<String>> {
        let event = InputLogEvent::builder()
            .timestamp(timestamp_ms)
            .message(message)
            .build()?;
        let out = self
            .client
            .put_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .log_events(event)
            .send()
            .await
            .map_err(|e| aws_error(e, &format!("recording the owner in stream {stream}")))?;
        Ok(out.rejected_log_events_info().map(|r| {
            let why = if r.too_new_log_event_start_index().is_some() {
                "too new"
            } else if r.too_old_log_event_end_index().is_some() {
                "too old"
            } else if r.expired_log_event_end_index().is_some() {
                "expired"
            } else {
                "rejected"
            };
            format!("event at {timestamp_ms} ms {why}")
        }))
    }
}
