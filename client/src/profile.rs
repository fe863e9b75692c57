//! A user's profile directory: the private key file and the client settings.
//!
//! ```text
//! <home>/key           hex secret key, mode 0600
//! <home>/profile.toml  uid = 5299989643264, servers = ["127.0.0.1:1024"]
//! ```
//!
//! A *portable* key (the spec's "insecure/portable key") can instead be derived from a user name
//! and password with argon2id, so a user can log in from a machine that does not hold the key
//! file; it is only as strong as the password.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use gossip_common::{Keypair, UserId};
use serde::{Deserialize, Serialize};

/// Errors reading or writing a profile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not in the expected format.
    #[error("{path}: {detail}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The key file exists and would be overwritten.
    #[error("{0} already exists; refusing to overwrite a key (use --force to replace it)")]
    KeyExists(PathBuf),
}

/// Settings kept in `profile.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Settings {
    /// The registered UserID.
    pub uid: Option<u64>,
    /// Servers to use, `host:port` (base port).
    #[serde(default)]
    pub servers: Vec<String>,
    /// Server identity keys pinned at first contact (or vouched for by a pinned server),
    /// `host:port` → key (hex). A server that proves another key is refused.
    #[serde(default)]
    pub server_keys: std::collections::BTreeMap<String, String>,
    /// The own nickname as last seen in the own record (for `gossip whoami --card`, which
    /// works offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nick: Option<String>,
    /// `gossip chat` rings the terminal bell for a message from a contact not on screen
    /// (`/notify on|off`).
    #[serde(default)]
    pub notify: bool,
}

impl Settings {
    /// The pinned keys that parse.
    pub fn pins(&self) -> crate::Pins {
        self.server_keys
            .iter()
            .filter_map(|(s, k)| Some((s.clone(), k.parse().ok()?)))
            .collect()
    }

    /// Replaces the pinned keys.
    pub fn set_pins(&mut self, pins: &crate::Pins) {
        self.server_keys = pins
            .iter()
            .map(|(s, k)| (s.clone(), k.to_string()))
            .collect();
    }
}

/// A profile directory.
#[derive(Debug, Clone)]
pub struct Profile {
    home: PathBuf,
}

impl Profile {
    /// The profile at `home` (created when first written).
    pub fn at(home: impl Into<PathBuf>) -> Profile {
        Profile { home: home.into() }
    }

    /// The default profile: `$GOSSIP_HOME`, else `$XDG_CONFIG_HOME/gossip`, else
    /// `~/.config/gossip`.
    pub fn default_home() -> PathBuf {
        if let Some(h) = std::env::var_os("GOSSIP_HOME") {
            return h.into();
        }
        if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
            return Path::new(&x).join("gossip");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
        Path::new(&home).join(".config").join("gossip")
    }

    /// The directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    fn key_path(&self) -> PathBuf {
        self.home.join("key")
    }

    fn settings_path(&self) -> PathBuf {
        self.home.join("profile.toml")
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProfileError + '_ {
        move |source| ProfileError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Writes a key file (mode 0600). Refuses to overwrite unless `force`.
    pub fn save_key(&self, key: &Keypair, force: bool) -> Result<(), ProfileError> {
        fs::create_dir_all(&self.home).map_err(Self::io(&self.home))?;
        let _ = fs::set_permissions(&self.home, fs::Permissions::from_mode(0o700));
        let path = self.key_path();
        if path.exists() && !force {
            return Err(ProfileError::KeyExists(path));
        }
        let tmp = path.with_extension("tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(Self::io(&tmp))?;
        writeln!(f, "{}", key.secret_hex()).map_err(Self::io(&tmp))?;
        f.sync_all().map_err(Self::io(&tmp))?;
        fs::rename(&tmp, &path).map_err(Self::io(&path))
    }

    /// Reads the key file; refuses one that others can read.
    pub fn load_key(&self) -> Result<Keypair, ProfileError> {
        let path = self.key_path();
        let meta = fs::metadata(&path).map_err(Self::io(&path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(ProfileError::Invalid {
                path,
                detail: "key file is readable by other users; chmod 600 it".into(),
            });
        }
        let text = fs::read_to_string(&path).map_err(Self::io(&path))?;
        Keypair::from_secret_hex(text.trim()).map_err(|e| ProfileError::Invalid {
            path,
            detail: e.to_string(),
        })
    }

    /// Reads `profile.toml` (empty settings if absent).
    pub fn settings(&self) -> Result<Settings, ProfileError> {
        let path = self.settings_path();
        match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ProfileError::Invalid {
                path,
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(ProfileError::Io { path, source: e }),
        }
    }

    /// Writes `profile.toml`.
    pub fn save_settings(&self, s: &Settings) -> Result<(), ProfileError> {
        fs::create_dir_all(&self.home).map_err(Self::io(&self.home))?;
        let path = self.settings_path();
        let text = toml::to_string(s).map_err(|e| ProfileError::Invalid {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        fs::write(&path, text).map_err(Self::io(&path))
    }

    /// The registered UserID, if any.
    pub fn uid(&self) -> Result<Option<UserId>, ProfileError> {
        Ok(self.settings()?.uid.map(UserId))
    }
}

/// Derives the spec's "insecure/portable" key from a user name and password with argon2id
/// (64 MiB, 3 passes). The user name is the salt, so the same pair gives the same key anywhere.
pub fn portable_key(username: &str, password: &str) -> Keypair {
    use argon2::{Algorithm, Argon2, Params, Version};
    let params = Params::new(64 * 1024, 3, 1, Some(32)).expect("valid argon2 params");
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut salt = b"gossip-portable-key-v1:".to_vec();
    salt.extend_from_slice(username.as_bytes());
    let mut secret = [0u8; 32];
    argon
        .hash_password_into(password.as_bytes(), &salt, &mut secret)
        .expect("argon2 with valid params cannot fail");
    Keypair::from_secret_bytes(&secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::at(dir.path().join("prof"));
        let k = Keypair::generate();
        p.save_key(&k, false).unwrap();
        assert!(matches!(
            p.save_key(&k, false),
            Err(ProfileError::KeyExists(_))
        ));
        let mode = fs::metadata(dir.path().join("prof/key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(p.load_key().unwrap().public(), k.public());
        fs::set_permissions(
            dir.path().join("prof/key"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(p.load_key().is_err());
    }

    #[test]
    fn portable_key_is_deterministic() {
        let a = portable_key("ned", "correct horse");
        assert_eq!(a.public(), portable_key("ned", "correct horse").public());
        assert_ne!(a.public(), portable_key("ned", "wrong horse").public());
        assert_ne!(a.public(), portable_key("ted", "correct horse").public());
    }
}
