//! Keys and signatures (ed25519).
//!
//! Every signature Gossip makes is over `domain || message`, where the domain is a fixed,
//! NUL-terminated label per purpose. That keeps a signature made for one purpose (say, answering a
//! login challenge) from being replayed as another (say, a signed UserInfo record).
//!
//! One verification rule everywhere. A signature is checked one at a time (a client's update,
//! a login, a push) or in batches (datafiles at start-up, sync batches), and both must accept
//! exactly the same signatures, or two servers that got the same record by different paths
//! could disagree about it forever. ed25519-dalek's `verify_strict` (cofactorless) and its
//! batch verifier (cofactorless with random coefficients) can disagree on crafted signatures
//! whose points carry a small-order component; no cofactorless batch can avoid that. So Gossip
//! verifies with the ZIP-215 rules (`ed25519-zebra`): the cofactored equation
//! `[8][s]B = [8]R + [8][k]A` with a canonical `s`, for one signature and for a batch alike;
//! and a public key of small order (a "weak" key, for which signatures can be forged) is refused
//! when it is parsed, whatever the path. Signatures are standard ed25519 (RFC 8032).

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a signature is for; part of the signed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// UserInfo and ContactList records.
    Record,
    /// Login challenge responses.
    Login,
    /// Client-to-client chat messages.
    Chat,
    /// A server's or client's X25519 Noise static key, signed by its ed25519 identity.
    NoiseStatic,
    /// Statements a server makes about itself to the federation (its RTT row, its removal).
    ServerControl,
    /// The envelope of a relayed message (`relay`).
    Relay,
}

impl Domain {
    fn label(self) -> &'static [u8] {
        match self {
            Domain::Record => b"gossip-record-v1\0",
            Domain::Login => b"gossip-login-v1\0",
            Domain::Chat => b"gossip-chat-v1\0",
            Domain::NoiseStatic => b"gossip-noise-static-v1\0",
            Domain::ServerControl => b"gossip-server-control-v1\0",
            Domain::Relay => b"gossip-relay-v1\0",
        }
    }
}

/// Errors decoding keys and signatures or verifying signatures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The text is not hex of the right length.
    #[error("invalid {what}: expected {len} hex digits")]
    BadEncoding {
        /// "public key", "signature" or "private key".
        what: &'static str,
        /// Expected number of hex digits.
        len: usize,
    },
    /// The bytes are not a usable ed25519 public key.
    #[error("invalid public key")]
    BadKey,
    /// The signature does not verify for this key and message.
    #[error("signature does not verify")]
    BadSignature,
}

/// A user's private key. Never leaves the client; `Debug` does not print it.
#[derive(Clone)]
pub struct Keypair(SigningKey);

impl Keypair {
    /// A fresh random key from the OS random number generator.
    pub fn generate() -> Self {
        Keypair(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// Rebuilds a key from its 32 secret bytes (a key file, or a KDF output).
    pub fn from_secret_bytes(bytes: &[u8; 32]) -> Self {
        Keypair(SigningKey::from_bytes(bytes))
    }

    /// The 32 secret bytes, for writing a key file.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Parses the hex form written by [`Keypair::secret_hex`].
    pub fn from_secret_hex(s: &str) -> Result<Self, CryptoError> {
        let bad = CryptoError::BadEncoding {
            what: "private key",
            len: 64,
        };
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut bytes).map_err(|_| bad)?;
        Ok(Self::from_secret_bytes(&bytes))
    }

    /// The secret as hex, for key files.
    pub fn secret_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `message` for `domain`.
    pub fn sign(&self, domain: Domain, message: &[u8]) -> Signature {
        let mut buf = Vec::with_capacity(domain.label().len() + message.len());
        buf.extend_from_slice(domain.label());
        buf.extend_from_slice(message);
        Signature(self.0.sign(&buf))
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair(public {})", self.public())
    }
}

/// A user's public key; bound to their UserID forever once stored.
///
/// Held as its 32 bytes: the point is decompressed where a signature is checked (by the
/// verifier, once per distinct key of a batch), not at every parse, which at a million records
/// a sync was a decompression in five of its CPU cycles. A key that is not a point at all parses
/// but never verifies anything.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

/// The encodings of the eight points of small order, as ZIP-215 decodes them: the 255-bit y
/// values 0, 1, p−1, the two y of the order-8 points, and the non-canonical p and p+1 (y + p
/// fits in 255 bits only for y < 19), each with either sign bit (compared with the top bit
/// cleared). libsodium refuses keys with the same list; `tests::small_order_keys` checks it
/// against the curve's torsion points.
const SMALL_ORDER: [[u8; 32]; 7] = {
    let mut list = [[0u8; 32]; 7];
    // 0 (order 4) stays all zeroes.
    list[1][0] = 1; // 1 (the identity)
    let mut i = 0;
    while i < 32 {
        list[4][i] = 0xff; // p − 1 = −1 (order 2)
        list[5][i] = 0xff; // p ≡ 0 (order 4), non-canonical
        list[6][i] = 0xff; // p + 1 ≡ 1, non-canonical
        i += 1;
    }
    list[4][0] = 0xec;
    list[4][31] = 0x7f;
    list[5][0] = 0xed;
    list[5][31] = 0x7f;
    list[6][0] = 0xee;
    list[6][31] = 0x7f;
    list[2] = [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ];
    list[3] = [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ];
    list
};

/// Whether `bytes` encode a point of small order (with either sign bit).
fn is_small_order(bytes: &[u8; 32]) -> bool {
    let mut y = *bytes;
    y[31] &= 0x7f;
    SMALL_ORDER.contains(&y)
}

impl PublicKey {
    /// Parses 32 raw bytes. A key of small order is refused: anyone could sign for it.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, CryptoError> {
        if is_small_order(bytes) {
            return Err(CryptoError::BadKey);
        }
        Ok(PublicKey(*bytes))
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Verifies `signature` over `domain || message`.
    pub fn verify(
        &self,
        domain: Domain,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), CryptoError> {
        let mut buf = Vec::with_capacity(domain.label().len() + message.len());
        buf.extend_from_slice(domain.label());
        buf.extend_from_slice(message);
        let key =
            ed25519_zebra::VerificationKey::try_from(self.0).map_err(|_| CryptoError::BadKey)?;
        key.verify(&signature.0, &buf)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// Verifies many record signatures at once (batch verification, about twice as fast per
    /// signature as one by one), by the same rule as [`PublicKey::verify`]. Fails if any one
    /// fails; callers then fall back to [`PublicKey::verify`] to find which.
    pub fn verify_batch(items: &[(&PublicKey, &[u8], &Signature)]) -> Result<(), CryptoError> {
        let label = Domain::Record.label();
        let mut batch = ed25519_zebra::batch::Verifier::new();
        for (key, message, signature) in items {
            let message = [label, message].concat();
            batch.queue((
                ed25519_zebra::VerificationKeyBytes::from(key.0),
                signature.0,
                &message,
            ));
        }
        batch
            .verify(rand::rngs::OsRng)
            .map_err(|_| CryptoError::BadSignature)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", &hex::encode(self.0)[..16])
    }
}

impl FromStr for PublicKey {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut bytes).map_err(|_| CryptoError::BadEncoding {
            what: "public key",
            len: 64,
        })?;
        PublicKey::from_bytes(&bytes)
    }
}

/// An ed25519 signature (64 bytes, 128 hex digits on the wire).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(ed25519_dalek::Signature);

impl Signature {
    /// The 64 raw bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0.to_bytes()
    }

    /// Parses 64 raw bytes.
    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        Signature(ed25519_dalek::Signature::from_bytes(bytes))
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `encode_to_slice` is a table lookup per byte; `hex::encode` builds a String one char
        // at a time, which showed up in sync profiles.
        let mut buf = [0u8; 128];
        hex::encode_to_slice(self.0.to_bytes(), &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", &hex::encode(self.0.to_bytes())[..16])
    }
}

impl FromStr for Signature {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(s.trim(), &mut bytes).map_err(|_| CryptoError::BadEncoding {
            what: "signature",
            len: 128,
        })?;
        Ok(Signature::from_bytes(&bytes))
    }
}

macro_rules! serde_via_string {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<str>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_string!(PublicKey);
serde_via_string!(Signature);

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte list refuses exactly the encodings of the curve's eight small-order points: each
    /// torsion point with either sign bit, and the non-canonical encodings of 0 and 1; every
    /// listed encoding decodes to a small-order point; ordinary keys pass.
    #[test]
    fn small_order_keys() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        use curve25519_dalek::edwards::CompressedEdwardsY;
        let mut seen = std::collections::HashSet::new();
        for p in EIGHT_TORSION {
            for sign in [0u8, 0x80] {
                let mut b = p.compress().to_bytes();
                b[31] ^= sign;
                assert!(is_small_order(&b), "{}", hex::encode(b));
                assert!(PublicKey::from_bytes(&b).is_err());
                b[31] &= 0x7f;
                seen.insert(b);
            }
        }
        for entry in SMALL_ORDER {
            let point = CompressedEdwardsY(entry).decompress().expect("a point");
            assert!(point.is_small_order(), "{}", hex::encode(entry));
            seen.insert(entry);
        }
        // Five canonical y values (two torsion pairs share one y) plus p and p + 1.
        assert_eq!(seen.len(), 7);
        for _ in 0..1000 {
            let k = Keypair::generate().public();
            assert!(!is_small_order(k.as_bytes()));
            assert_eq!(PublicKey::from_bytes(k.as_bytes()), Ok(k));
        }
    }

    #[test]
    fn sign_verify_and_domain_separation() {
        let k = Keypair::generate();
        let sig = k.sign(Domain::Record, b"hello");
        assert!(k.public().verify(Domain::Record, b"hello", &sig).is_ok());
        assert_eq!(
            k.public().verify(Domain::Login, b"hello", &sig),
            Err(CryptoError::BadSignature)
        );
        assert!(k.public().verify(Domain::Record, b"hellp", &sig).is_err());
        let other = Keypair::generate();
        assert!(other
            .public()
            .verify(Domain::Record, b"hello", &sig)
            .is_err());
    }

    #[test]
    fn hex_round_trips() {
        let k = Keypair::generate();
        let pk: PublicKey = k.public().to_string().parse().unwrap();
        assert_eq!(pk, k.public());
        let sig = k.sign(Domain::Chat, b"x");
        assert_eq!(sig.to_string().parse::<Signature>().unwrap(), sig);
        let k2 = Keypair::from_secret_hex(&k.secret_hex()).unwrap();
        assert_eq!(k2.public(), k.public());
        assert!("zz".parse::<PublicKey>().is_err());
        assert!(!format!("{k:?}").contains(&k.secret_hex()));
    }

    #[test]
    fn batch_verification_catches_one_bad_signature() {
        let keys: Vec<Keypair> = (0..8).map(|_| Keypair::generate()).collect();
        let msgs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 10]).collect();
        let pubs: Vec<PublicKey> = keys.iter().map(Keypair::public).collect();
        let mut sigs: Vec<Signature> = keys
            .iter()
            .zip(&msgs)
            .map(|(k, m)| k.sign(Domain::Record, m))
            .collect();
        let items = |sigs: &[Signature]| -> Result<(), CryptoError> {
            let v: Vec<_> = (0..8)
                .map(|i| (&pubs[i], msgs[i].as_slice(), &sigs[i]))
                .collect();
            PublicKey::verify_batch(&v)
        };
        assert!(items(&sigs).is_ok());
        sigs[3] = keys[3].sign(Domain::Record, b"other");
        assert!(items(&sigs).is_err());
    }
}
