//! What the app is told when the proxy answers itself, and how an
//! endpoint's broken answer is named.
//!
//! A malformed or oversized response, or one whose framing is ambiguous,
//! is the endpoint's failure: like an upstream reset it counts as a
//! local-origin connect failure for outlier detection (Envoy does the same
//! for codec protocol errors), and the app gets a 502 (or, when it could
//! be retried and no other endpoint answered, a 503) saying plainly what
//! was wrong, never the endpoint's bytes.

use std::error::Error as _;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};

use super::Body;

/// Envoy's default limits on a message head (`max_headers_count`,
/// `max_request_headers_kb`/`max_response_headers_kb`), for requests and
/// responses alike. The count is also hyper's default.
pub(crate) const MAX_HEADERS: usize = 100;
pub(crate) const MAX_HEAD_BYTES: usize = 60 * 1024;

/// Why an endpoint's answer (or the app's request body) could not be
/// passed on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResponseError {
    #[error("endpoint sent a malformed HTTP response: {0}")]
    Malformed(String),
    #[error(
        "endpoint's response head is over the limits ({MAX_HEADERS} headers, {} KiB)",
        MAX_HEAD_BYTES / 1024
    )]
    TooLarge,
    #[error(
        "endpoint sent a malformed HTTP response: both Content-Length and Transfer-Encoding \
         (ambiguous framing, RFC 9112 §6.3)"
    )]
    LengthAndChunked,
    #[error("endpoint switched protocols (101) though the request asked for no upgrade")]
    UnaskedUpgrade,
    #[error("upstream reset before response: {0}")]
    Reset(String),
    /// Not the endpoint's fault: the app's body broke off or was malformed.
    #[error("the request body could not be read: {0}")]
    AppBody(String),
    /// Not the endpoint's fault either: hyper would not send the request.
    #[error("the request could not be sent: {0}")]
    Unsendable(String),
}

impl ResponseError {
    /// What went wrong with a request that left, from hyper's error.
    pub(crate) fn classify(e: &hyper::Error) -> Self {
        if e.is_user() {
            // hyper keeps the body's own error as the cause.
            if e.source().is_some() {
                ResponseError::AppBody(chain(e))
            } else {
                ResponseError::Unsendable(chain(e))
            }
        } else if e.is_parse_too_large() {
            ResponseError::TooLarge
        } else if e.is_parse() || e.is_parse_status() {
            ResponseError::Malformed(chain(e))
        } else {
            // A TLS alert after the handshake (a client certificate the
            // endpoint wants) surfaces here; say it in plain words.
            ResponseError::Reset(crate::tls::explain(e).unwrap_or_else(|| chain(e)))
        }
    }

    /// A response whose framing cannot be trusted: hyper reads it as
    /// chunked, but a server that sends both may mean the length, and
    /// whatever follows on the connection is then unknown.
    pub(crate) fn check_framing(headers: &http::HeaderMap) -> Result<(), Self> {
        if headers.contains_key(header::TRANSFER_ENCODING)
            && headers.contains_key(header::CONTENT_LENGTH)
        {
            return Err(ResponseError::LengthAndChunked);
        }
        Ok(())
    }
}

/// An error with its causes: hyper's own text is only the outermost.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

/// An answer the proxy makes itself.
#[derive(Debug)]
pub(crate) struct Local {
    pub(crate) status: StatusCode,
    pub(crate) detail: String,
    /// A circuit breaker said no (Envoy marks those `x-envoy-overloaded`).
    pub(crate) overflow: bool,
}

impl Local {
    pub(crate) fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Local {
            status,
            detail: detail.into(),
            overflow: false,
        }
    }

    pub(crate) fn unavailable(detail: impl Into<String>) -> Self {
        Local::new(StatusCode::SERVICE_UNAVAILABLE, detail)
    }

    pub(crate) fn overflow(detail: impl Into<String>) -> Self {
        Local {
            overflow: true,
            ..Local::unavailable(detail)
        }
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        let what = match (self.overflow, self.status) {
            (true, _) => "upstream overflow (circuit breaker)",
            (false, StatusCode::SERVICE_UNAVAILABLE) => "no healthy upstream",
            (false, StatusCode::BAD_REQUEST) => "bad request",
            _ => "upstream error",
        };
        let text = format!("{what}: {}\n", self.detail);
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(text))));
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.overflow {
            headers.insert("x-envoy-overloaded", HeaderValue::from_static("true"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_length_and_chunked_is_ambiguous() {
        let mut h = http::HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(ResponseError::check_framing(&h).is_ok());
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let e = ResponseError::check_framing(&h).unwrap_err();
        assert!(
            e.to_string()
                .contains("Content-Length and Transfer-Encoding")
        );
        h.remove(header::CONTENT_LENGTH);
        assert!(ResponseError::check_framing(&h).is_ok());
    }

    #[test]
    fn the_limits_are_named_in_the_message() {
        assert_eq!(
            ResponseError::TooLarge.to_string(),
            "endpoint's response head is over the limits (100 headers, 60 KiB)"
        );
    }

    #[test]
    fn overflow_replies_are_marked() {
        let resp = Local::overflow("full").into_response();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["x-envoy-overloaded"], "true");
        let resp = Local::unavailable("none").into_response();
        assert!(!resp.headers().contains_key("x-envoy-overloaded"));
    }
}
