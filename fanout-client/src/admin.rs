//! A small client of fanout's admin HTTP API (see `docs/API.md`), used by the `fanout` CLI.
//!
//! Answers are returned as JSON values; errors carry the server's problem document (its
//! stable `code`, the `detail` and the `field` at fault).

use std::fmt;
use std::time::Duration;

use serde_json::Value;

/// An admin API failure.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The server refused the request, with its problem document.
    #[error("{code}: {detail}{}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The problem's stable `code` (the status when the answer has none).
        code: String,
        /// What is wrong, for a person.
        detail: String,
        /// The request field at fault, if one is.
        field: Option<String>,
    },
    /// The server could not be reached, or answered something that is not the API.
    #[error("{0}")]
    Transport(String),
}

/// Client of one shard's admin API.
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl AdminClient {
    /// `base` is the admin API's address (`http://host:8080`); `token` the bearer token,
    /// if the server requires one.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, AdminError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| AdminError::Transport(e.to_string()))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    /// The scheme of the admin API's address (`http` or `https`).
    pub fn scheme(&self) -> &str {
        self.base.split_once("://").map_or("http", |(s, _)| s)
    }

    /// `GET path` (e.g. `/v1/topics`).
    pub async fn get(&self, path: &str) -> Result<Value, AdminError> {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value, AdminError> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// A POST that may take long (a redrive reads and publishes for up to a minute).
    pub async fn post_slow(&self, path: &str, body: Value) -> Result<Value, AdminError> {
        self.send_with(
            reqwest::Method::POST,
            path,
            Some(body),
            Some(Duration::from_secs(180)),
        )
        .await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, body: Value) -> Result<Value, AdminError> {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Value, AdminError> {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, AdminError> {
        self.send_with(method, path, body, None).await
    }

    async fn send_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        timeout: Option<Duration>,
    ) -> Result<Value, AdminError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| AdminError::Transport(format!("cannot reach {url}: {e}")))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| AdminError::Transport(format!("reading the answer of {url}: {e}")))?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|_| {
                AdminError::Transport(format!(
                    "{url} answered {status} with something that is not JSON: {}",
                    text.chars().take(200).collect::<String>()
                ))
            })?
        };
        if status.is_success() {
            return Ok(value);
        }
        let s = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
        Err(AdminError::Refused {
            status: status.as_u16(),
            code: s("code").unwrap_or_else(|| status.as_u16().to_string()),
            detail: s("detail").unwrap_or_else(|| value.to_string()),
            field: s("field"),
        })
    }
}

/// A path segment, percent-encoded (names are ASCII letters, digits, `.`, `_`, `-`; anything
/// else is encoded so the server sees it and refuses it precisely).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    // `.` and `..` would be read as path steps, not names.
    let only_dots = s.bytes().all(|b| b == b'.');
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') || (b == b'.' && !only_dots) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
