//! The keyring's place in the federation service: loading and saving `servers.keys`, binding
//! a name to the key it first shows, and the admin's view and changes of it. The rules
//! themselves are the pure [`keyring`](super::keyring).

use std::collections::BTreeMap;

use super::{keyring, membership, Federation};
use crate::mst::{id_string, ServerId};

/// The keyring's file in the data directory.
pub(crate) const KEYRING_FILE: &str = "servers.keys";

impl Federation {
    /// Loads the keyring saved in `dir` (bindings and refusals) under the configured policy.
    pub(crate) fn load_keyring(config: &crate::config::Config) -> keyring::Keyring {
        let mut ring = keyring::Keyring::new(
            config.federation,
            config.allowed_keys.clone(),
            membership::MAX_SERVERS,
        );
        let path = config.data_dir.join(KEYRING_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => match ring.load_json(&text) {
                Ok(skipped) if skipped.is_empty() => {}
                Ok(skipped) => {
                    tracing::warn!(path = %path.display(), ?skipped, "keyring entries that do not parse were skipped")
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "keyring unreadable; starting with no bindings (names re-bind on first sight)")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(path = %path.display(), error = %e, "keyring unreadable"),
        }
        ring
    }

    /// Checks `name` presenting `key` (a link's handshake, or a key carried by a message),
    /// binding it on first sight; refusals are logged and counted by the caller.
    pub(crate) fn claim_key(
        &self,
        name: &ServerId,
        key: &gossip_common::PublicKey,
    ) -> keyring::Verdict {
        let (verdict, snapshot) = {
            let mut st = self.state.lock();
            let (v, added) = st.keys.claim(name, key);
            (v, added.then(|| st.keys.to_json()))
        };
        if let Some(json) = snapshot {
            tracing::info!(server = %id_string(name), key = %key, "server key bound on first sight");
            self.save_keys(&json);
        }
        verdict
    }

    /// This server's identity key.
    pub(crate) fn own_key(&self) -> gossip_common::PublicKey {
        self.signer.public()
    }

    /// Signs a statement this server makes to the federation (domain `ServerControl`):
    /// returns its key and the signature, both in hex.
    pub(crate) fn sign_statement(&self, bytes: &[u8]) -> (String, String) {
        let sig = self
            .signer
            .sign(gossip_common::Domain::ServerControl, bytes);
        (self.signer.public().to_string(), sig.to_string())
    }

    /// Checks a statement `name` signed (domain `ServerControl`): against the key bound to
    /// `name`, or against `carried`, which is bound on first sight as a row's key is. Returns
    /// the key that signed it.
    pub(crate) fn verify_statement(
        &self,
        name: &ServerId,
        carried: Option<&str>,
        bytes: &[u8],
        sig: Option<&str>,
    ) -> Result<gossip_common::PublicKey, &'static str> {
        let key = if *name == self.me {
            self.signer.public()
        } else {
            match carried {
                Some(text) => {
                    let key: gossip_common::PublicKey =
                        text.parse().map_err(|_| "an invalid key")?;
                    if !self.claim_key(name, &key).accepted() {
                        return Err("signed by a key not bound to the server it names");
                    }
                    key
                }
                None => self
                    .key_of(name)
                    .ok_or("no key known for the server it names")?,
            }
        };
        let sig: gossip_common::Signature = sig
            .ok_or("unsigned")?
            .parse()
            .map_err(|_| "an invalid signature")?;
        key.verify(gossip_common::Domain::ServerControl, bytes, &sig)
            .map_err(|_| "the signature does not verify")?;
        Ok(key)
    }

    /// The key bound to `name`, if any.
    pub(crate) fn key_of(&self, name: &ServerId) -> Option<gossip_common::PublicKey> {
        self.state.lock().keys.key_of(name).copied()
    }

    /// Runs `f` on the keyring (admin changes) and saves it.
    pub(crate) fn with_keyring<T>(&self, f: impl FnOnce(&mut keyring::Keyring) -> T) -> T {
        let (out, json) = {
            let mut st = self.state.lock();
            let out = f(&mut st.keys);
            (out, st.keys.to_json())
        };
        self.save_keys(&json);
        out
    }

    /// Bindings and refusals, for display.
    pub(crate) fn keyring_view(
        &self,
    ) -> (BTreeMap<String, String>, Vec<String>, keyring::Admission) {
        let st = self.state.lock();
        let bound = st
            .members
            .servers()
            .iter()
            .filter_map(|s| st.keys.key_of(s).map(|k| (id_string(s), k.to_string())))
            .collect();
        let refused = st.keys.refused().map(|k| k.to_string()).collect();
        (bound, refused, st.keys.admission())
    }

    /// Writes the keyring file (temporary file, fsync, rename). Rare (a new server, an admin
    /// change) and small, so done in place.
    fn save_keys(&self, json: &str) {
        let guard = self.keys_file.lock();
        let Some(path) = guard.as_ref() else { return };
        let tmp = path.with_extension("tmp");
        let result = (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(json.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = result {
            tracing::error!(path = %path.display(), error = %e, "cannot save the keyring; bindings made since the last save are lost at restart");
        }
    }
}
