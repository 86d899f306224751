//! An endpoint's response body on its way to the app, watched for the
//! endpoint failing after its status was counted: a connection cut off
//! mid-body or a broken chunk. Envoy counts such a reset as a local-origin
//! connect failure whenever it happens; so does this. The app's connection
//! is then closed by hyper, so the app sees an incomplete response, never
//! a complete-looking truncated one.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::reply::chain;
use crate::{
    cluster::{Cluster, Host},
    outlier::Outcome,
};

pub(crate) struct Watched {
    body: Incoming,
    /// Whom to blame, until blamed once.
    endpoint: Option<(Arc<Cluster>, Host)>,
}

impl Watched {
    pub(crate) fn new(body: Incoming, cluster: Arc<Cluster>, host: Host) -> Self {
        Watched {
            body,
            endpoint: Some((cluster, host)),
        }
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        if let Some(Err(e)) = &frame
            && let Some((cluster, host)) = this.endpoint.take()
        {
            let error = format!("response body broke off: {}", chain(e));
            tracing::debug!(endpoint = %host, "{error}");
            cluster.record(&host, Outcome::ConnectFailed, Some(&error));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
