//! The server's own ed25519 identity key: made on first start in the data directory
//! (`server.key`, mode 0600, created with that mode so it is never readable by others even for
//! an instant), loaded at every start after. It signs the Noise static key of every connection
//! this process makes or accepts (see `gossip_common::secure`) and the statements this server
//! makes about itself to the federation (its RTT row, its own removal). The secret never
//! appears in logs, diagnostics or the admin socket: only its fingerprint does.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use gossip_common::secure::Identity;
use gossip_common::{Keypair, PublicKey};

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "server.key";

/// The server's identity: the signing key and the handshake identity made from it.
pub struct ServerKeys {
    signing: Keypair,
    noise: Arc<Identity>,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerKeys({})", fingerprint(&self.public()))
    }
}

impl ServerKeys {
    /// Loads `dir/server.key`, creating it (mode 0600) on first start.
    pub fn load_or_create(dir: &Path) -> std::io::Result<ServerKeys> {
        let path = dir.join(KEY_FILE);
        let signing = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mode = std::fs::metadata(&path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{:o}", mode & 0o777),
                        "the server key is readable by others; run chmod 600 on it"
                    );
                }
                Keypair::from_secret_hex(&text).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {e}; restore it from a backup, or delete it to make a new identity (other servers will then refuse this one until their admins re-bind it)", path.display()),
                    )
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Keypair::generate();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                writeln!(f, "{}", key.secret_hex())?;
                f.sync_all()?;
                tracing::info!(fingerprint = %fingerprint(&key.public()), "made a new server identity key");
                key
            }
            Err(e) => return Err(e),
        };
        Ok(ServerKeys::from_keypair(signing))
    }

    /// Keys from an existing keypair (the simulator's nodes).
    pub fn from_keypair(signing: Keypair) -> ServerKeys {
        let noise = Identity::new(&signing);
        ServerKeys { signing, noise }
    }

    /// The public identity key.
    pub fn public(&self) -> PublicKey {
        self.signing.public()
    }

    /// The signing key.
    pub(crate) fn signing(&self) -> &Keypair {
        &self.signing
    }

    /// The handshake identity shared by every connection.
    pub(crate) fn noise(&self) -> &Identity {
        &self.noise
    }
}

/// A key's fingerprint as operators compare and pin it: the whole public key in hex. A raw
/// 32-byte key is short enough to show whole, and a hash of it would only be a shorter name
/// that leaves a second thing to trust.
pub fn fingerprint(key: &PublicKey) -> String {
    key.to_string()
}
