//! The Telnyx API client: one pooled reqwest client on rustls, with connect
//! and request timeouts from config and no retries of its own (retries belong
//! to the pipeline). It reports what happened; [`super::classify`]
//! decides what it means.

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};

use crate::config::TelnyxSettings;
use crate::secret::Secret;

/// Error bodies larger than this are cut before parsing.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// An HTTP answer from the API.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub latency: Duration,
}

/// The request did not produce an HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("request timed out")]
    Timeout,
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("transport error: {0}")]
    Other(String),
}

pub type ApiResult = Result<ApiResponse, TransportError>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("telnyx.base_url is not a valid URL: {0}")]
    BaseUrl(String),
    #[error("the API key contains characters that are not allowed in a header")]
    BadKey,
    #[error("could not build the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

#[derive(Clone)]
pub struct TelnyxClient {
    http: reqwest::Client,
    messages_url: reqwest::Url,
    canary_url: reqwest::Url,
    auth: HeaderValue,
}

/// The message id the canary asks for: the nil UUID, which no message has.
pub const CANARY_MESSAGE_ID: &str = "00000000-0000-0000-0000-000000000000";

impl std::fmt::Debug for TelnyxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelnyxClient")
            .field("messages_url", &self.messages_url.as_str())
            .field("auth", &"[redacted]")
            .finish()
    }
}

impl TelnyxClient {
    pub fn new(settings: &TelnyxSettings) -> Result<Self, ClientError> {
        Self::with_key(settings, &settings.api_key)
    }

    pub fn with_key(settings: &TelnyxSettings, key: &Secret) -> Result<Self, ClientError> {
        let base = settings.base_url.trim_end_matches('/');
        let messages_url = reqwest::Url::parse(&format!("{base}/messages"))
            .map_err(|e| ClientError::BaseUrl(e.to_string()))?;
        let canary_url = reqwest::Url::parse(&format!("{base}/messages/{CANARY_MESSAGE_ID}"))
            .map_err(|e| ClientError::BaseUrl(e.to_string()))?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
            .map_err(|_| ClientError::BadKey)?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("send-worker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            messages_url,
            canary_url,
            auth,
        })
    }

    /// `GET /v2/messages/{nil uuid}`: a question no job can spoil. A working
    /// API answers 404 (or 200); an API that is down answers 5xx or not at
    /// all. The circuit breaker asks it when a probe job fails, to tell an
    /// outage from a job that fails on its own. Sends nothing.
    pub async fn canary(&self) -> ApiResult {
        let started = Instant::now();
        let response = self
            .http
            .get(self.canary_url.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(transport_error)?;
        Ok(ApiResponse {
            status,
            headers,
            body: body[..body.len().min(MAX_ERROR_BODY)].to_vec(),
            latency: started.elapsed(),
        })
    }

    /// `POST /v2/messages` with `body` as it is.
    pub async fn send_message(&self, body: bytes::Bytes) -> ApiResult {
        let started = Instant::now();
        let response = self
            .http
            .post(self.messages_url.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        // A 2xx whose body cannot be read was still accepted: classification
        // must not turn it into a retry (that would send the SMS twice).
        let body = match response.bytes().await {
            Ok(b) if (200..300).contains(&status) => b.to_vec(),
            Ok(b) => b[..b.len().min(MAX_ERROR_BODY)].to_vec(),
            Err(_) if (200..300).contains(&status) => Vec::new(),
            Err(e) => return Err(transport_error(e)),
        };
        Ok(ApiResponse {
            status,
            headers,
            body,
            latency: started.elapsed(),
        })
    }
}

fn transport_error(e: reqwest::Error) -> TransportError {
    // reqwest's Display never includes headers, so the key cannot leak here;
    // the URL is the configured base URL.
    if e.is_timeout() {
        TransportError::Timeout
    } else if e.is_connect() {
        TransportError::Connect(error_chain(&e))
    } else {
        TransportError::Other(error_chain(&e))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
