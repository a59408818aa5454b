//! Downloads checked against the SHA-256 recorded when the object was stored.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use sha2::{Digest, Sha256};

use crate::ByteStream;

/// `body`, which ends in an error instead of its end when its bytes do not hash to
/// `expected`: a corrupted or replaced object never reaches a reader as if whole.
pub(super) fn checked(
    key: String,
    expected: String,
    body: ByteStream<'static>,
) -> ByteStream<'static> {
    Box::pin(Checked {
        key,
        expected: expected.to_ascii_lowercase(),
        body,
        hasher: Some(Sha256::new()),
    })
}

struct Checked {
    key: String,
    expected: String,
    body: ByteStream<'static>,
    /// `None` once the end was checked.
    hasher: Option<Sha256>,
}

impl Stream for Checked {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.body.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(hasher) = this.hasher.as_mut() {
                    hasher.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                let Some(hasher) = this.hasher.take() else {
                    return Poll::Ready(None);
                };
                let got = format!("{:x}", hasher.finalize());
                if got == this.expected {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "object {} failed its SHA-256 check (stored as {}, read as {got}): \
                             the copy in the bucket is damaged",
                            this.key, this.expected
                        ),
                    ))))
                }
            }
            other => other,
        }
    }
}
