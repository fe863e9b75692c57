//! The encrypted, authenticated channel every TCP connection runs in (client ↔ server and
//! server ↔ server): Noise over X25519, ChaCha20-Poly1305 and BLAKE2s (the `snow` crate), `XX`
//! between servers and `NX` from clients.
//!
//! Why Noise and not TLS: Gossip's identities are raw ed25519 keys bound to names on first sight,
//! with no certificate authority anywhere; Noise authenticates raw keys natively, its handshake
//! is a round trip or two of a few hundred bytes, and `XX`/`NX` let a side learn the other's key
//! without knowing it in advance (first contact) while hiding the identities from a passive
//! observer. Clients use `NX`: they have no static key to prove (the login challenge proves the
//! user's), which saves the server one of four X25519 operations per connection and the client
//! a round trip.
//!
//! Binding Noise to the ed25519 identity: each process makes a fresh X25519 static key and signs
//! it with its ed25519 identity (domain [`Domain::NoiseStatic`]); the signature and the identity
//! key travel as the encrypted handshake payload (as libp2p's Noise does). A peer that shows an
//! identity therefore proves it holds both the identity key and the Noise key of this very
//! handshake. The responder (a server) always shows one (message 2); a dialling server shows one
//! in message 3 (`XX`); a client shows none (`NX`).
//!
//! Layers: the handshake ([`connect`], [`accept`]) runs on the raw stream with its own 2-byte
//! length framing; afterwards [`SecureStream`] (or its halves, [`SecureReader`] and
//! [`SecureWriter`]) is an ordinary `AsyncRead + AsyncWrite`, so the XML framing above does not
//! know it is encrypted. Every transport message is `u16 length ‖ ciphertext`, at most 65,535
//! bytes; writes are encrypted per `poll_write` call (a codec's whole buffer of frames at once)
//! and must be flushed, as with a `BufWriter`.
//!
//! A plaintext peer (its first byte is `<` or whitespace, the start of an XML frame) gets one
//! plaintext `error` saying encryption is required, then the connection closes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use snow::{Builder, HandshakeState, StatelessTransportState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::crypto::{Domain, Keypair, PublicKey, Signature};

/// The Noise protocol between servers: `XX`, both sides prove a static key.
pub const NOISE_FEDERATION: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// The Noise protocol from clients: `NX`, only the server proves a static key (the client
/// proves its user key inside the channel, by the login challenge). One round trip and three
/// X25519 operations on the server instead of `XX`'s four.
pub const NOISE_CLIENT: &str = "Noise_NX_25519_ChaChaPoly_BLAKE2s";

/// Largest Noise message (the spec's limit), length prefix excluded.
const MAX_MESSAGE: usize = 65_535;
/// Poly1305 tag.
const TAG: usize = 16;
/// Largest plaintext in one transport message.
const MAX_PLAIN: usize = MAX_MESSAGE - TAG;
/// Handshake messages are a few hundred bytes; anything longer is not a Gossip peer.
const MAX_HANDSHAKE_MESSAGE: usize = 1024;
/// Ciphertext a writer holds before `poll_write` waits for the socket.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Identity payload: ed25519 public key and its signature over the Noise static key.
const IDENTITY_PAYLOAD: usize = 32 + 64;
/// The whole handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection is for; part of the Noise prologue, so a client handshake with a server
/// port (or the reverse) fails instead of running the wrong protocol encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A chat client on the client port (P).
    Client,
    /// A server link on the server port (P+1).
    Federation,
}

impl Purpose {
    fn params(self) -> snow::params::NoiseParams {
        match self {
            Purpose::Client => NOISE_CLIENT,
            Purpose::Federation => NOISE_FEDERATION,
        }
        .parse()
        .expect("a valid Noise protocol name")
    }

    /// Whether the initiator proves a static key (message 3).
    fn mutual(self) -> bool {
        self == Purpose::Federation
    }

    fn prologue(self) -> &'static [u8] {
        match self {
            Purpose::Client => b"gossip/1 client",
            Purpose::Federation => b"gossip/1 federation",
        }
    }
}

/// Why a handshake or a secured stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecureError {
    /// The socket failed or closed.
    #[error("connection failed during the encryption handshake: {0}")]
    Io(#[from] io::Error),
    /// The peer spoke plaintext XML to an encrypted port.
    #[error("the peer sent plaintext; this port accepts only encrypted (Noise) connections")]
    Plaintext,
    /// The peer answered in plaintext: a refusal sent before any handshake (a full server), or
    /// a server from before encryption. Holds what it sent (at most 4 KiB).
    #[error("the server answered in plaintext: {}", String::from_utf8_lossy(.0).trim())]
    PlaintextAnswer(Vec<u8>),
    /// The handshake bytes were not valid Noise.
    #[error("encryption handshake failed: {0}")]
    Noise(String),
    /// The peer's identity payload is missing, malformed or its signature does not verify.
    #[error("the peer's identity does not verify: {0}")]
    BadIdentity(&'static str),
    /// The handshake took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("encryption handshake timed out")]
    Timeout,
}

impl From<snow::Error> for SecureError {
    fn from(e: snow::Error) -> Self {
        SecureError::Noise(e.to_string())
    }
}

/// This process's side of the handshake: its ed25519 identity (if any), a fresh X25519 static
/// key, and the identity's signature over it. Made once per process (one signature, one key
/// generation) and shared by every connection.
pub struct Identity {
    noise_private: Vec<u8>,
    #[cfg_attr(not(test), allow(dead_code))]
    noise_public: Vec<u8>,
    /// The identity payload sent in the handshake; empty when anonymous.
    payload: Vec<u8>,
    public: Option<PublicKey>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({:?})", self.public)
    }
}

impl Identity {
    /// An identity proven by `key`.
    pub fn new(key: &Keypair) -> Arc<Self> {
        let (noise_private, noise_public) = noise_keypair();
        let sig = key.sign(Domain::NoiseStatic, &noise_public);
        let mut payload = Vec::with_capacity(IDENTITY_PAYLOAD);
        payload.extend_from_slice(key.public().as_bytes());
        payload.extend_from_slice(&sig.to_bytes());
        Arc::new(Identity {
            noise_private,
            noise_public,
            payload,
            public: Some(key.public()),
        })
    }

    /// No identity: a client before login. The channel is encrypted and the server
    /// authenticated; the client proves its user key inside it. (`NX` needs no static key on
    /// the client's side, so none is made.)
    pub fn anonymous() -> Arc<Self> {
        let (noise_private, noise_public) = (Vec::new(), Vec::new());
        Arc::new(Identity {
            noise_private,
            noise_public,
            payload: Vec::new(),
            public: None,
        })
    }

    /// The ed25519 key this identity proves, if any.
    pub fn public(&self) -> Option<PublicKey> {
        self.public
    }
}

fn noise_keypair() -> (Vec<u8>, Vec<u8>) {
    let kp = Builder::new(Purpose::Federation.params())
        .generate_keypair()
        .expect("the default resolver generates X25519 keys");
    (kp.private, kp.public)
}

fn builder<'a>(
    purpose: Purpose,
    me: &'a Identity,
    initiator: bool,
) -> Result<Builder<'a>, SecureError> {
    let b = Builder::new(purpose.params()).prologue(purpose.prologue())?;
    if initiator && !purpose.mutual() {
        return Ok(b); // NX: the initiator has no static key
    }
    if me.noise_private.is_empty() {
        return Err(SecureError::BadIdentity(
            "this side has no identity to prove",
        ));
    }
    Ok(b.local_private_key(&me.noise_private)?)
}

/// The identity `payload` proves for the peer's Noise static key of handshake `hs`.
fn peer_identity(hs: &HandshakeState, payload: &[u8]) -> Result<PublicKey, SecureError> {
    let remote = hs
        .get_remote_static()
        .ok_or(SecureError::BadIdentity("no static key"))?;
    verify_identity(payload, remote)
}

/// Checks an identity payload against the peer's Noise static key of this handshake.
fn verify_identity(payload: &[u8], remote_static: &[u8]) -> Result<PublicKey, SecureError> {
    if payload.len() != IDENTITY_PAYLOAD {
        return Err(SecureError::BadIdentity("payload has the wrong length"));
    }
    let key_bytes: [u8; 32] = payload[..32].try_into().expect("32 bytes");
    let sig_bytes: [u8; 64] = payload[32..].try_into().expect("64 bytes");
    let key = PublicKey::from_bytes(&key_bytes).map_err(|_| SecureError::BadIdentity("bad key"))?;
    key.verify(
        Domain::NoiseStatic,
        remote_static,
        &Signature::from_bytes(&sig_bytes),
    )
    .map_err(|_| SecureError::BadIdentity("signature over the Noise key does not verify"))?;
    Ok(key)
}

async fn send_handshake<S: AsyncWrite + Unpin>(
    stream: &mut S,
    hs: &mut HandshakeState,
    payload: &[u8],
) -> Result<(), SecureError> {
    let mut buf = [0u8; 2 + MAX_HANDSHAKE_MESSAGE];
    let n = hs.write_message(payload, &mut buf[2..])?;
    buf[..2].copy_from_slice(&(n as u16).to_be_bytes());
    stream.write_all(&buf[..2 + n]).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads one handshake message and returns its payload. `first` = the two length bytes when
/// the caller already read them.
async fn recv_handshake<S: AsyncRead + Unpin>(
    stream: &mut S,
    hs: &mut HandshakeState,
    first: Option<[u8; 2]>,
) -> Result<Vec<u8>, SecureError> {
    let len = match first {
        Some(b) => b,
        None => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).await?;
            if looks_like_xml(b[0]) {
                // Keep what it says (a refusal such as `server-full` comes this way).
                let mut said = b.to_vec();
                let _ = (&mut *stream).take(4096).read_to_end(&mut said).await;
                return Err(SecureError::PlaintextAnswer(said));
            }
            b
        }
    };
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_HANDSHAKE_MESSAGE {
        return Err(SecureError::Noise(format!(
            "handshake message of {len} bytes"
        )));
    }
    let mut msg = vec![0u8; len];
    stream.read_exact(&mut msg).await?;
    let mut payload = vec![0u8; len];
    let n = hs.read_message(&msg, &mut payload)?;
    payload.truncate(n);
    Ok(payload)
}

/// The first byte of an XML frame (or the whitespace before one). A Noise message length this
/// large (≥ 0x0900 bytes) is never a handshake message, so the test cannot misjudge a peer.
fn looks_like_xml(b: u8) -> bool {
    matches!(b, b'<' | b' ' | b'\t' | b'\r' | b'\n')
}

/// The plaintext refusal a plaintext peer gets before the connection closes.
fn plaintext_refusal() -> Vec<u8> {
    let mut out = crate::Message::new(
        std::net::Ipv6Addr::UNSPECIFIED,
        crate::message::Error {
            code: crate::ErrorCode::UnsupportedVersion,
            text: "this port accepts only encrypted connections (Noise); \
                   upgrade your client or server"
                .to_owned(),
            current: None,
        },
    )
    .to_xml()
    .into_bytes();
    out.push(b'\n');
    out
}

/// Opens the channel as the initiator. Returns the secured stream and the responder's proven
/// identity key (a Gossip server always proves one).
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    purpose: Purpose,
    me: &Identity,
) -> Result<(SecureStream<S>, PublicKey), SecureError> {
    within_deadline(connect_inner(stream, purpose, me)).await
}

/// Runs a handshake under [`HANDSHAKE_TIMEOUT`].
async fn within_deadline<T>(
    handshake: impl std::future::Future<Output = Result<T, SecureError>>,
) -> Result<T, SecureError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| SecureError::Timeout)?
}

async fn connect_inner<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    purpose: Purpose,
    me: &Identity,
) -> Result<(SecureStream<S>, PublicKey), SecureError> {
    let mut hs = builder(purpose, me, true)?.build_initiator()?;
    send_handshake(&mut stream, &mut hs, &[]).await?;
    let payload = recv_handshake(&mut stream, &mut hs, None).await?;
    let peer = peer_identity(&hs, &payload)?;
    if purpose.mutual() {
        send_handshake(&mut stream, &mut hs, &me.payload).await?;
    }
    Ok((SecureStream::new(stream, hs)?, peer))
}

/// Accepts the channel as the responder. Returns the secured stream and the initiator's proven
/// identity, `None` when it chose to stay anonymous (`require_identity` refuses that).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    purpose: Purpose,
    me: &Identity,
    require_identity: bool,
) -> Result<(SecureStream<S>, Option<PublicKey>), SecureError> {
    within_deadline(accept_inner(stream, purpose, me, require_identity)).await
}

async fn accept_inner<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    purpose: Purpose,
    me: &Identity,
    require_identity: bool,
) -> Result<(SecureStream<S>, Option<PublicKey>), SecureError> {
    let mut first = [0u8; 2];
    stream.read_exact(&mut first).await?;
    if looks_like_xml(first[0]) {
        let _ = stream.write_all(&plaintext_refusal()).await;
        let _ = stream.shutdown().await;
        return Err(SecureError::Plaintext);
    }
    let mut hs = builder(purpose, me, false)?.build_responder()?;
    let payload = recv_handshake(&mut stream, &mut hs, Some(first)).await?;
    if !payload.is_empty() {
        return Err(SecureError::Noise(
            "unexpected payload in the first message".into(),
        ));
    }
    send_handshake(&mut stream, &mut hs, &me.payload).await?;
    let payload = if purpose.mutual() {
        recv_handshake(&mut stream, &mut hs, None).await?
    } else {
        Vec::new()
    };
    let peer = if payload.is_empty() {
        None
    } else {
        Some(peer_identity(&hs, &payload)?)
    };
    if require_identity && peer.is_none() {
        return Err(SecureError::BadIdentity("no identity shown"));
    }
    Ok((SecureStream::new(stream, hs)?, peer))
}

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
    fn new(inner: S, hs: HandshakeState) -> Result<Self, SecureError> {
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
    use super::*;
    use tokio::io::duplex;

    async fn pair(
        client_id: Arc<Identity>,
    ) -> (
        SecureStream<tokio::io::DuplexStream>,
        SecureStream<tokio::io::DuplexStream>,
        PublicKey,
        Option<PublicKey>,
    ) {
        let purpose = if client_id.public().is_some() {
            Purpose::Federation
        } else {
            Purpose::Client
        };
        pair_for(purpose, client_id).await
    }

    async fn pair_for(
        purpose: Purpose,
        client_id: Arc<Identity>,
    ) -> (
        SecureStream<tokio::io::DuplexStream>,
        SecureStream<tokio::io::DuplexStream>,
        PublicKey,
        Option<PublicKey>,
    ) {
        let server_key = Keypair::generate();
        let server_id = Identity::new(&server_key);
        let (a, b) = duplex(1 << 20);
        let (c, s) = tokio::join!(
            connect(a, purpose, &client_id),
            accept(b, purpose, &server_id, false)
        );
        let (c, seen_server) = c.unwrap();
        let (s, seen_client) = s.unwrap();
        assert_eq!(seen_server, server_key.public());
        (c, s, seen_server, seen_client)
    }

    #[tokio::test]
    async fn both_ways_large_and_small_writes_arrive_intact() {
        let (mut c, mut s, _, who) = pair(Identity::anonymous()).await;
        assert!(who.is_none());
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let send = big.clone();
        let writer = tokio::spawn(async move {
            c.write_all(&send).await.unwrap();
            c.write_all(b"tail").await.unwrap();
            c.flush().await.unwrap();
            let mut back = [0u8; 2];
            c.read_exact(&mut back).await.unwrap();
            back
        });
        let mut got = vec![0u8; big.len() + 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..big.len()], &big[..]);
        assert_eq!(&got[big.len()..], b"tail");
        s.write_all(b"ok").await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(&writer.await.unwrap(), b"ok");
    }

    #[tokio::test]
    async fn a_vectored_write_of_many_frames_arrives_in_order() {
        let (mut c, mut s, _, _) = pair(Identity::anonymous()).await;
        let frames: Vec<Vec<u8>> = (0..500)
            .map(|i| format!("<f n='{i}'/>").into_bytes())
            .collect();
        let mut slices: Vec<io::IoSlice<'_>> = Vec::new();
        for f in &frames {
            slices.push(io::IoSlice::new(f));
            slices.push(io::IoSlice::new(b"\n"));
        }
        let expect: Vec<u8> = frames
            .iter()
            .flat_map(|f| f.iter().copied().chain([b'\n']))
            .collect();
        let mut bufs = &mut slices[..];
        while !bufs.is_empty() {
            let n = c.write_vectored(bufs).await.unwrap();
            io::IoSlice::advance_slices(&mut bufs, n);
        }
        c.flush().await.unwrap();
        let mut got = vec![0u8; expect.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expect);
    }

    #[tokio::test]
    async fn a_dialling_servers_identity_is_proven_and_a_clients_is_not_sent() {
        let key = Keypair::generate();
        let (_, _, _, who) = pair_for(Purpose::Federation, Identity::new(&key)).await;
        assert_eq!(who, Some(key.public()));
        // NX: a client never shows a static key, even when it has an identity.
        let (mut c, mut s, _, who) = pair_for(Purpose::Client, Identity::new(&key)).await;
        assert_eq!(who, None);
        c.write_all(b"x").await.unwrap();
        c.flush().await.unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.unwrap();
    }

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

    #[tokio::test]
    async fn a_plaintext_peer_is_refused_with_a_readable_error() {
        let server_id = Identity::new(&Keypair::generate());
        let (mut a, b) = duplex(1 << 16);
        a.write_all(b"<ping/>\n").await.unwrap();
        let r = accept(b, Purpose::Client, &server_id, false).await;
        assert!(matches!(r, Err(SecureError::Plaintext)));
        let mut text = String::new();
        a.read_to_string(&mut text).await.unwrap();
        assert!(text.contains("encrypted"), "{text}");
        assert!(text.starts_with("<error"), "{text}");
    }

    #[tokio::test]
    async fn purposes_do_not_mix_and_anonymous_is_refused_when_identity_is_required() {
        let server_id = Identity::new(&Keypair::generate());
        let anon = Identity::anonymous();
        let (a, b) = duplex(1 << 16);
        let (c, s) = tokio::join!(
            connect(a, Purpose::Client, &anon),
            accept(b, Purpose::Federation, &server_id, false)
        );
        assert!(c.is_err() || s.is_err());
        // A server link whose initiator has a Noise key but proves no identity with it.
        let (noise_private, noise_public) = noise_keypair();
        let unproven = Identity {
            noise_private,
            noise_public,
            payload: Vec::new(),
            public: None,
        };
        let (a, b) = duplex(1 << 16);
        let (_, s) = tokio::join!(
            connect(a, Purpose::Federation, &unproven),
            accept(b, Purpose::Federation, &server_id, true)
        );
        assert!(matches!(s, Err(SecureError::BadIdentity(_))), "{s:?}");
        // And an initiator with no key at all cannot start a server link.
        let (a, _b) = duplex(1 << 16);
        assert!(matches!(
            connect(a, Purpose::Federation, &anon).await,
            Err(SecureError::BadIdentity(_))
        ));
    }

    #[test]
    fn an_identity_signed_for_another_noise_key_is_refused() {
        let key = Keypair::generate();
        let id = Identity::new(&key);
        assert_eq!(
            verify_identity(&id.payload, &id.noise_public).unwrap(),
            key.public()
        );
        let (_, other_static) = noise_keypair();
        assert!(verify_identity(&id.payload, &other_static).is_err());
    }
}
