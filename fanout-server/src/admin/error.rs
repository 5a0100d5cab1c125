//! Errors of the admin API as RFC 9457 problem documents with a stable `code`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rdkafka::error::KafkaError;
use serde::Serialize;

use crate::store::StoreError;

/// An admin API error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable identifier (`topic_exists`, `invalid_field`, ...).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub detail: String,
    /// The request field at fault, if one is (`name`, `offsets.3`, ...).
    pub field: Option<String>,
}

/// An error, as an RFC 9457 problem document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:fanout:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    pub status: u16,
    /// Stable, machine-readable identifier (`topic_exists`, `invalid_field`, ...).
    pub code: String,
    /// What went wrong, for a person.
    pub detail: String,
    /// The request field at fault, if one is (`name`, `offsets.3`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            field: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", detail).field(field)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    /// Well-formed, but impossible given the state of Kafka or fanout.
    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    pub fn kafka(e: KafkaError) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_unavailable",
            format!("Kafka did not answer: {e}"),
        )
    }

    pub fn store(e: StoreError) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_unavailable",
            format!(
                "the registry could not be written, or the write was not applied in time: {e}; \
                 it may or may not have taken effect: look before retrying"
            ),
        )
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            kind: format!("urn:fanout:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("error").to_owned(),
            status: self.status.as_u16(),
            code: self.code.to_owned(),
            detail: self.detail,
            field: self.field,
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}
