//! IP blacklist (the spec's "allow a server admin to refuse connections from specified IPs").
//!
//! Entries are single addresses or CIDR ranges, IPv4 or IPv6. A refused peer is dropped at
//! accept, on the client port and on the server port, and the refusal is logged. The list is
//! kept in `<data-dir>/blacklist.txt` (one entry per line, `#` comments), written crash-safely,
//! so it survives restarts; entries from the config file are added at start.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::IpNet;
use parking_lot::RwLock;

/// The set of refused addresses.
pub struct Blacklist {
    nets: RwLock<Vec<IpNet>>,
    path: PathBuf,
}

/// Parses `192.0.2.7`, `198.51.100.0/24`, `2001:db8::/32`.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    IpNet::from_str(s)
        .or_else(|_| IpAddr::from_str(s).map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))
}

/// IPv4-mapped IPv6 peers are matched as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Blacklist {
    /// Loads `path` (if present) plus `extra` entries from the config.
    pub fn load(path: &Path, extra: &[String]) -> Result<Blacklist, String> {
        let mut nets = Vec::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for line in text.lines().map(str::trim) {
                    if !line.is_empty() && !line.starts_with('#') {
                        nets.push(parse_net(line).map_err(|e| format!("{}: {e}", path.display()))?);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        for e in extra {
            let net = parse_net(e).map_err(|e| format!("config blacklist: {e}"))?;
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        Ok(Blacklist {
            nets: RwLock::new(nets),
            path: path.to_owned(),
        })
    }

    /// Whether `ip` is refused.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.read().iter().any(|n| n.contains(&ip))
    }

    /// The entries.
    pub fn list(&self) -> Vec<String> {
        self.nets.read().iter().map(|n| n.to_string()).collect()
    }

    /// Adds an entry and saves; `Ok(false)` if it was already there.
    pub fn add(&self, s: &str) -> Result<bool, String> {
        let net = parse_net(s)?;
        let mut nets = self.nets.write();
        if nets.contains(&net) {
            return Ok(false);
        }
        nets.push(net);
        self.save(&nets)?;
        Ok(true)
    }

    /// Removes an entry and saves; `Ok(false)` if it was not there.
    pub fn remove(&self, s: &str) -> Result<bool, String> {
        let net = parse_net(s)?;
        let mut nets = self.nets.write();
        let before = nets.len();
        nets.retain(|n| *n != net);
        if nets.len() == before {
            return Ok(false);
        }
        self.save(&nets)?;
        Ok(true)
    }

    fn save(&self, nets: &[IpNet]) -> Result<(), String> {
        let mut text = String::from("# gossipd blacklist: one IP or CIDR range per line\n");
        for n in nets {
            text.push_str(&n.to_string());
            text.push('\n');
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| format!("saving {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_persist_and_match_mapped_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blacklist.txt");
        let b = Blacklist::load(&path, &["2001:db8::/32".into()]).unwrap();
        assert!(b.add("198.51.100.0/24").unwrap());
        assert!(
            !b.add("198.51.100.7/24").unwrap(),
            "same range after truncation"
        );
        assert!(b.contains("198.51.100.9".parse().unwrap()));
        assert!(b.contains("::ffff:198.51.100.9".parse().unwrap()));
        assert!(b.contains("2001:db8::1".parse().unwrap()));
        assert!(!b.contains("192.0.2.1".parse().unwrap()));
        assert!(b.add("not-an-ip").is_err());
        let again = Blacklist::load(&path, &[]).unwrap();
        assert!(again.contains("198.51.100.200".parse().unwrap()));
        assert!(again.remove("198.51.100.0/24").unwrap());
        assert!(!Blacklist::load(&path, &[])
            .unwrap()
            .contains("198.51.100.200".parse().unwrap()));
    }
}
