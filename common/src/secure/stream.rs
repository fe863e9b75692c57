//! The transport phase: [`SecureStream`] (and its halves [`SecureReader`], [`SecureWriter`])
//! as an ordinary `AsyncRead + AsyncWrite`, every transport message `u16 length ‖ ciphertext`.
//! The per-direction cipher states live here, so that a split stream needs no lock between its
//! reader and writer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use snow::{HandshakeState, StatelessTransportState};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::SecureError;

/// Largest Noise message (the spec's limit), length prefix excluded.
const MAX_MESSAGE: usize = 65_535;
/// Poly1305 tag.
const TAG: usize = 16;
/// Largest plaintext in one transport message.
const MAX_PLAIN: usize = MAX_MESSAGE - TAG;
/// Ciphertext a writer holds before `poll_write` waits for the socket.
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// Decryption state of one direction.
struct ReadState {
    cipher: Arc<StatelessTransportState>,
    nonce: u64,
    /// Ciphertext read and not yet decrypted.
    raw: BytesMut,
    /// Decrypted bytes not yet handed out, from `pos`.
    plain: Vec<u8>,
    pos: usize,
}

impl ReadState {
    fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        inner: &mut R,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.pos < self.plain.len() {
                let n = (self.plain.len() - self.pos).min(buf.remaining());
                buf.put_slice(&self.plain[self.pos..self.pos + n]);
                self.pos += n;
                if self.pos == self.plain.len() {
                    // Drained: an idle connection keeps no buffer memory.
                    self.plain = Vec::new();
                    self.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if self.raw.len() >= 2 {
                let len = u16::from_be_bytes([self.raw[0], self.raw[1]]) as usize;
                if len < TAG {
                    return Poll::Ready(Err(invalid("short encrypted message")));
                }
                if self.raw.len() >= 2 + len {
                    self.plain.resize(len - TAG, 0);
                    self.pos = 0;
                    let n = self
                        .cipher
                        .read_message(self.nonce, &self.raw[2..2 + len], &mut self.plain)
                        .map_err(|_| invalid("an encrypted message does not authenticate"))?;
                    self.plain.truncate(n);
                    self.nonce += 1;
                    self.raw.advance(2 + len);
                    if self.raw.is_empty() {
                        self.raw = BytesMut::new();
                    }
                    continue;
                }
                self.raw.reserve(2 + len - self.raw.len());
            }
            let n = if self.raw.capacity() - self.raw.len() >= 4096 {
                ready!(tokio_util::io::poll_read_buf(
                    Pin::new(&mut *inner),
                    cx,
                    &mut self.raw
                ))?
            } else {
                // Waiting with an empty buffer costs nothing: read into the stack and keep only
                // what arrived (an idle client's pending read holds no heap buffer).
                let mut stack = [0u8; 4096];
                let mut rb = ReadBuf::new(&mut stack);
                ready!(Pin::new(&mut *inner).poll_read(cx, &mut rb))?;
                self.raw.extend_from_slice(rb.filled());
                rb.filled().len()
            };
            if n == 0 {
                return Poll::Ready(if self.raw.is_empty() {
                    Ok(())
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                });
            }
        }
    }
}

thread_local! {
    /// Gathers a vectored write into one plaintext; one per thread, not per connection.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Encryption state of one direction.
struct WriteState {
    cipher: Arc<StatelessTransportState>,
    nonce: u64,
    /// Ciphertext not yet written to the socket.
    out: BytesMut,
}

impl WriteState {
    fn poll_drain<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut *inner).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        // Drained: an idle connection keeps no buffer memory.
        self.out = BytesMut::new();
        Poll::Ready(Ok(()))
    }

    /// Encrypts as much of `bufs` as fits one message (a batch of frames and their newlines
    /// becomes one message, not one per slice).
    fn poll_write_vectored<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match bufs.iter().find(|b| !b.is_empty()) {
            None => return Poll::Ready(Ok(0)),
            Some(b) if b.len() >= MAX_PLAIN / 2 => return self.poll_write(inner, cx, b),
            Some(_) => {}
        }
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            for b in bufs {
                let room = MAX_PLAIN - scratch.len();
                if room == 0 {
                    break;
                }
                scratch.extend_from_slice(&b[..b.len().min(room)]);
            }
            self.poll_write(inner, cx, scratch)
        })
    }

    fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.out.len() >= WRITE_HIGH_WATER {
            ready!(self.poll_drain(inner, cx))?;
        }
        let n = buf.len().min(MAX_PLAIN);
        let start = self.out.len();
        self.out.resize(start + 2 + n + TAG, 0);
        let len = self
            .cipher
            .write_message(self.nonce, &buf[..n], &mut self.out[start + 2..])
            .map_err(|e| io::Error::other(format!("encryption failed: {e}")))?;
        self.out[start..start + 2].copy_from_slice(&(len as u16).to_be_bytes());
        self.out.truncate(start + 2 + len);
        self.nonce += 1;
        // Hand the socket what it takes now; the rest goes at the next write or flush.
        if let Poll::Ready(Err(e)) = self.poll_drain(inner, cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// A stream inside the encrypted channel.
pub struct SecureStream<S> {
    inner: S,
    rd: ReadState,
    wr: WriteState,
}

impl<S> std::fmt::Debug for SecureStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecureStream")
    }
}

impl<S> SecureStream<S> {
    pub(super) fn new(inner: S, hs: HandshakeState) -> Result<Self, SecureError> {
        let cipher = Arc::new(hs.into_stateless_transport_mode()?);
        Ok(SecureStream {
            inner,
            rd: ReadState {
                cipher: Arc::clone(&cipher),
                nonce: 0,
                raw: BytesMut::new(),
                plain: Vec::new(),
                pos: 0,
            },
            wr: WriteState {
                cipher,
                nonce: 0,
                out: BytesMut::new(),
            },
        })
    }

    /// Splits into a reader and a writer that need no lock between them, using `split` for
    /// the underlying stream (`TcpStream::into_split`, or `tokio::io::split` for any stream).
    pub fn split_with<R, W>(
        self,
        split: impl FnOnce(S) -> (R, W),
    ) -> (SecureReader<R>, SecureWriter<W>) {
        let (r, w) = split(self.inner);
        (
            SecureReader {
                inner: r,
                st: self.rd,
            },
            SecureWriter {
                inner: w,
                st: self.wr,
            },
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SecureStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.rd.poll_read(&mut me.inner, cx, buf)
    }
}

/// `AsyncWrite` for a type holding the socket (or its write half) in `inner` and a
/// [`WriteState`] in the named field: the same for the whole stream and the writing half.
macro_rules! secure_write {
    ($ty:ident, $state:ident) => {
        impl<T: AsyncWrite + Unpin> AsyncWrite for $ty<T> {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                let me = self.get_mut();
                me.$state.poll_write(&mut me.inner, cx, buf)
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                let me = self.get_mut();
                me.$state.poll_write_vectored(&mut me.inner, cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                let me = self.get_mut();
                ready!(me.$state.poll_drain(&mut me.inner, cx))?;
                Pin::new(&mut me.inner).poll_flush(cx)
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                let me = self.get_mut();
                ready!(me.$state.poll_drain(&mut me.inner, cx))?;
                Pin::new(&mut me.inner).poll_shutdown(cx)
            }
        }
    };
}

secure_write!(SecureStream, wr);
secure_write!(SecureWriter, st);

/// The reading half of a [`SecureStream`].
pub struct SecureReader<R> {
    inner: R,
    st: ReadState,
}

impl<R: AsyncRead + Unpin> AsyncRead for SecureReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.st.poll_read(&mut me.inner, cx, buf)
    }
}

/// The writing half of a [`SecureStream`]. Flush after writing: ciphertext the socket did not
/// take at once waits for the next write or flush.
pub struct SecureWriter<W> {
    inner: W,
    st: WriteState,
}

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::crypto::Keypair;
    use crate::secure::{accept, connect, Identity, Purpose};

    #[tokio::test]
    async fn a_tampered_byte_fails_authentication() {
        let server_id = Identity::new(&Keypair::generate());
        let (a, b) = duplex(1 << 16);
        let (relay_side, b2) = duplex(1 << 16);
        // Handshake directly, then corrupt one transport byte on the way.
        let anon = Identity::anonymous();
        let (c, s) = tokio::join!(
            connect(a, Purpose::Client, &anon),
            accept(b, Purpose::Client, &server_id, false)
        );
        let (mut c, _) = c.unwrap();
        let (s, _) = s.unwrap();
        drop((relay_side, b2));
        c.write_all(b"hello").await.unwrap();
        c.flush().await.unwrap();
        let SecureStream {
            mut inner, mut rd, ..
        } = s;
        let mut raw = vec![0u8; 2 + 5 + TAG];
        inner.read_exact(&mut raw).await.unwrap();
        raw[4] ^= 1;
        let mut replay = &raw[..];
        let mut buf = [0u8; 16];
        let mut rb = ReadBuf::new(&mut buf);
        let r = futures::future::poll_fn(|cx| rd.poll_read(&mut replay, cx, &mut rb)).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
