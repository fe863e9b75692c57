//! The admin protocol between `prodserver` and a running `gossipd`: one JSON object per line on
//! a local Unix socket, a request answered by exactly one response.
//!
//! JSON rather than the XML wire format because it is for tools and people (`nc -U` and `jq`
//! work), and its commands are not part of the federation protocol. The command enum lives here
//! so the server and the tool cannot disagree about it.
//!
//! Two sockets give two privilege levels: `admin.sock` (mode 0600: the server's user only)
//! accepts every command; `status.sock` (mode 0660: also the server's group) accepts only the
//! read-only ones ([`AdminRequest::is_read_only`]).

use serde::{Deserialize, Serialize};

/// A request to the admin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum AdminRequest {
    /// Overview: name, ports, users, clients, peers, tree, uptime.
    Status,
    /// Known servers with RTT, liveness and link state.
    Servers,
    /// This server's RTT row and every row it holds (the matrix).
    Rtt,
    /// The spanning tree and this server's neighbours.
    Mst,
    /// Every stored user (uid, nick, status, event count).
    Users,
    /// One stored record, its event count and whether its signature verifies.
    User {
        /// The UserID.
        uid: u64,
    },
    /// Add a server (`host:port`, base port): resolved first, then measured and linked.
    AddServer {
        /// `host:port`.
        server: String,
    },
    /// Forget and refuse a server here (others take it as a hint to re-measure it); naming
    /// this server itself makes it leave the federation (its signed removal is flooded).
    DeleteServer {
        /// `host:port`.
        server: String,
    },
    /// Bind a server name to an identity key: pin it before first contact, or accept a key
    /// rotation. Links of that name with another key are closed.
    Trust {
        /// `host:port`.
        server: String,
        /// The key, 64 hex digits.
        key: String,
    },
    /// Re-measure every server and recompute the tree now.
    Recalc,
    /// Send a notice (`servermsg`) to every client logged in to this server.
    Notice {
        /// The text, e.g. "restarting for maintenance at 22:00 UTC".
        text: String,
    },
    /// Refuse connections from an IP or CIDR range, or links from a server identity key.
    BlacklistAdd {
        /// `192.0.2.7`, `198.51.100.0/24`, `2001:db8::/32`, or a key (64 hex digits).
        net: String,
    },
    /// Allow an IP or range again.
    BlacklistRemove {
        /// As added.
        net: String,
    },
    /// The blacklist.
    BlacklistList,
    /// Counters and gauges in the Prometheus text format (`data.text`).
    Metrics,
    /// Everything for a bug report: version, config (secrets redacted), status, RTT matrix,
    /// tree, metrics, recent log lines. Never contains keys or secrets.
    Diagnostics,
    /// Write a backup of the running node (datafiles, wills, mailbox, keyring, blacklist;
    /// the private key only with `include_key`) to `path`, a tar archive the server writes
    /// itself (through a temporary file beside it). Restored by `gossipd --restore`.
    Backup {
        /// Where the archive goes: an absolute path the server's user may write.
        path: String,
        /// Include `server.key`: whoever holds the archive can then act as this server.
        #[serde(default)]
        include_key: bool,
    },
}

impl AdminRequest {
    /// Whether the request only reads state (allowed on the read-only socket).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            AdminRequest::Status
                | AdminRequest::Servers
                | AdminRequest::Rtt
                | AdminRequest::Mst
                | AdminRequest::Users
                | AdminRequest::User { .. }
                | AdminRequest::BlacklistList
                | AdminRequest::Metrics
                | AdminRequest::Diagnostics
        )
    }
}

/// The answer to one [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminResponse {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The result.
    #[serde(default)]
    pub data: serde_json::Value,
}

impl AdminResponse {
    /// A success carrying `data`.
    pub fn ok(data: serde_json::Value) -> Self {
        AdminResponse {
            ok: true,
            error: None,
            data,
        }
    }

    /// A failure with a reason.
    pub fn err(reason: impl Into<String>) -> Self {
        AdminResponse {
            ok: false,
            error: Some(reason.into()),
            data: serde_json::Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_json_lines_with_a_cmd_tag() {
        let r = AdminRequest::BlacklistAdd {
            net: "10.0.0.0/8".into(),
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"cmd":"blacklist-add","net":"10.0.0.0/8"}"#);
        assert_eq!(serde_json::from_str::<AdminRequest>(&line).unwrap(), r);
        assert!(!r.is_read_only());
        assert!(AdminRequest::Status.is_read_only());
    }
}
