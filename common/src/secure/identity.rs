//! This process's identity in the handshake ([`Identity`]: a fresh X25519 static key signed
//! by the ed25519 identity), and the check that a peer's identity payload proves the Noise key
//! of this very handshake. Kept apart from the handshake's message flow because it is the one
//! place where Noise keys and Gossip identities meet.

use std::sync::Arc;

use snow::{Builder, HandshakeState};

use super::{Purpose, SecureError};
use crate::crypto::{Domain, Keypair, PublicKey, Signature};

/// Identity payload: ed25519 public key and its signature over the Noise static key.
const IDENTITY_PAYLOAD: usize = 32 + 64;

/// This process's side of the handshake: its ed25519 identity (if any), a fresh X25519 static
/// key, and the identity's signature over it. Made once per process (one signature, one key
/// generation) and shared by every connection.
pub struct Identity {
    pub(super) noise_private: Vec<u8>,
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) noise_public: Vec<u8>,
    /// The identity payload sent in the handshake; empty when anonymous.
    pub(super) payload: Vec<u8>,
    pub(super) public: Option<PublicKey>,
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

pub(super) fn noise_keypair() -> (Vec<u8>, Vec<u8>) {
    let kp = Builder::new(Purpose::Federation.params())
        .generate_keypair()
        .expect("the default resolver generates X25519 keys");
    (kp.private, kp.public)
}

/// The identity `payload` proves for the peer's Noise static key of handshake `hs`.
pub(super) fn peer_identity(hs: &HandshakeState, payload: &[u8]) -> Result<PublicKey, SecureError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
