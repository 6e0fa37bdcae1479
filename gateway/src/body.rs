//! Body types. Responses are an enum rather than a boxed trait object so the proxied case (an
//! upstream's `Incoming`) costs no allocation; requests are the client's `Incoming` wrapped with
//! the route's size limit and an idle timeout that cuts off clients who dribble bodies.

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use tokio::time::Sleep;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body.
#[derive(Debug)]
pub enum ResBody {
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

impl ResBody {
    pub fn full(b: impl Into<Bytes>) -> ResBody {
        ResBody::Full(Some(b.into()))
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResBody::Empty => Poll::Ready(None),
            ResBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResBody::Incoming(i) => Pin::new(i).poll_frame(cx).map_err(Into::into),
            ResBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResBody::Empty => true,
            ResBody::Full(b) => b.is_none(),
            ResBody::Incoming(i) => i.is_end_stream(),
            ResBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResBody::Empty => SizeHint::with_exact(0),
            ResBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResBody::Full(None) => SizeHint::with_exact(0),
            ResBody::Incoming(i) => i.size_hint(),
            ResBody::Stream(s) => s.size_hint(),
        }
    }
}

/// Why a request body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than the route's limit of {0} bytes")]
    TooLarge(u64),
    #[error("request body sent nothing for {0:?}")]
    Idle(Duration),
    #[error("reading the request body: {0}")]
    Client(#[from] hyper::Error),
}

/// When a request body last moved, so the route timeout can count the upstream's silence from
/// the end of an upload rather than from its start (a 1 GiB push outlasts any sane timeout).
#[derive(Debug)]
pub struct Progress {
    base: std::time::Instant,
    last_nanos: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub fn new() -> std::sync::Arc<Progress> {
        std::sync::Arc::new(Progress {
            base: std::time::Instant::now(),
            last_nanos: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let n = self.base.elapsed().as_nanos() as u64;
        self.last_nanos
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The last time the body moved.
    pub fn last(&self) -> std::time::Instant {
        self.base + Duration::from_nanos(self.last_nanos.load(std::sync::atomic::Ordering::Relaxed))
    }
}

pin_project_lite::pin_project! {
    /// The client's request body on its way upstream.
    pub struct ReqBody {
        #[pin]
        inner: Incoming,
        limit: Option<u64>,
        seen: u64,
        idle: Duration,
        // Armed only while the client keeps us waiting, so bodiless requests pay nothing.
        timer: Option<Pin<Box<Sleep>>>,
        progress: Option<std::sync::Arc<Progress>>,
    }
}

impl std::fmt::Debug for ReqBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReqBody")
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl ReqBody {
    pub fn new(
        inner: Incoming,
        limit: Option<u64>,
        idle: Duration,
        progress: Option<std::sync::Arc<Progress>>,
    ) -> ReqBody {
        ReqBody {
            inner,
            limit,
            seen: 0,
            idle,
            timer: None,
            progress,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Pending => {
                let idle = *this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyError::Idle(idle))))
            }
            Poll::Ready(frame) => {
                if let Some(p) = this.progress {
                    p.touch();
                }
                if let Some(t) = this.timer.as_mut() {
                    t.as_mut().reset(tokio::time::Instant::now() + *this.idle);
                }
                let frame = match frame {
                    None => return Poll::Ready(None),
                    Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                    Some(Ok(f)) => f,
                };
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                    if let Some(limit) = *this.limit {
                        if *this.seen > limit {
                            return Poll::Ready(Some(Err(BodyError::TooLarge(limit))));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;

/// Finds a [`BodyError`] in an error's source chain (the upstream client wraps it).
pub fn find_body_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(b) = e.downcast_ref::<BodyError>() {
            return Some(b);
        }
        cur = e.source();
    }
    None
}
