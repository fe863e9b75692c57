//! Configuration: a TOML file overridden by command-line flags, validated once into [`Config`].
//!
//! Every field of [`FileConfig`] can be set in the file; `gossipd --help` lists the flags. The
//! field docs here are the reference (docs/operations.md repeats them with examples).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An invalid setting or unreadable config file; the message says which and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(ConfigError(format!($($fmt)+)));
        }
    };
}

/// Every setting, as the TOML file and the command line both give it: one struct, so a setting
/// is declared once (its doc here is both the file's reference and `gossipd --help`). Every field
/// is optional; [`FileConfig::merge`] lays the flags over the file, and
/// [`Config::from_file_config`] applies defaults and validates.
#[derive(Debug, Default, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// This server's host name, as clients and other servers reach it [default: host name].
    #[arg(long, value_name = "HOST")]
    pub name: Option<String>,
    /// Base port P (clients on P, servers on P+1, RTT on P+2) [default: 1024]. 0: any free
    /// ports the kernel picks (the server's identity then changes at every start; for tests and
    /// throwaway nodes).
    #[arg(long, short = 'p', value_name = "P")]
    pub base_port: Option<u16>,
    /// Exit with an error (status 3) instead of moving to another base port when P..P+2 are
    /// taken.
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub strict_ports: Option<bool>,
    /// Address to bind; links and probes leave from it too [default: 0.0.0.0].
    #[arg(long, value_name = "IP")]
    pub bind: Option<String>,
    /// Directory for datafiles and the transaction log [default: ./gossip-data].
    #[arg(long, short = 'd', value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Largest accepted message frame in bytes [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub max_frame: Option<usize>,
    /// Most simultaneous client connections; more are refused with `server-full` [default:
    /// 18000, below the usual 20000 open-file limit, leaving room for datafiles and links].
    #[arg(long, value_name = "N")]
    pub max_clients: Option<usize>,
    /// Messages queued to one client before it counts as a slow consumer and is dropped
    /// [default: 1024: more than the contacts one list can hold, so every contact changing at
    /// once (their server died) fits; an idle queue costs nothing].
    #[arg(long, value_name = "N")]
    pub outbound_queue: Option<usize>,
    /// Seconds of client silence before the server pings it [default: 10].
    #[arg(long = "keepalive", value_name = "SECS")]
    pub keepalive_s: Option<f64>,
    /// Seconds of client silence before it counts as gone (half-open TCP) and its last will is
    /// published [default: 30].
    #[arg(long = "idle-timeout", value_name = "SECS")]
    pub idle_timeout_s: Option<f64>,
    /// Seconds a connection has to log in or register, pings or not; then it is closed
    /// [default: 60].
    #[arg(long = "login-deadline", value_name = "SECS")]
    pub login_deadline_s: Option<f64>,
    /// Registrations one address may start per minute (a burst of as many, then that rate);
    /// more get `not-allowed` with the time to wait [default: 30].
    #[arg(long, value_name = "N")]
    pub registrations_per_minute: Option<f64>,
    /// Seconds a UserID reserved for a registration stays locked [default: 900].
    #[arg(long = "uid-lock", value_name = "SECS")]
    pub uid_lock_s: Option<u64>,
    /// Frames a second one client connection may send (ten seconds' worth as a burst); a
    /// client past it is sent an error and disconnected [default: 200].
    #[arg(long = "client-frames-per-second", value_name = "N")]
    pub client_frames_per_s: Option<f64>,
    /// KiB a second one client connection may send (eight seconds' worth as a burst); a client
    /// past it is sent an error and disconnected [default: 1024].
    #[arg(long = "client-kib-per-second", value_name = "KIB")]
    pub client_kib_per_s: Option<f64>,
    /// How links resync at link-up: `range` (range-based reconciliation, falling back to
    /// `eventCounts` for peers that do not offer it) or `event-counts` (the spec's full lists
    /// only) [default: range].
    #[arg(long, value_name = "METHOD")]
    pub sync: Option<SyncMethod>,
    /// Who may join the federation through this server: `open` (any server with a valid
    /// identity key; names bind to their first key) or `allowlist` (only the keys given by
    /// `allow_key`) [default: open].
    #[arg(long, value_name = "POLICY")]
    pub federation: Option<crate::federation::keyring::Admission>,
    /// A server identity key (64 hex digits, as `prodserver servers` shows it) admitted in
    /// `allowlist` mode; repeat for several.
    #[arg(long = "allow-key", value_name = "KEY")]
    pub allowed_keys: Option<Vec<String>>,
    /// A server to join, HOST:PORT (its base port); repeat for several.
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Option<Vec<String>>,
    /// Admin socket for prodserver (mode 0600; a read-only status.sock, mode 0660, is created
    /// beside it) [default: DATA_DIR/admin.sock].
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// IPs or CIDR ranges refused on the client and server ports, added to those saved with
    /// `prodserver blacklist add`; repeat for several.
    #[arg(long = "blacklist", value_name = "NET")]
    pub blacklist: Option<Vec<String>>,
    /// Record every frame sent and received to FILE (JSON lines; summarise with
    /// `prodserver trace summarize FILE`).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on ADDR:PORT, e.g.
    /// 127.0.0.1:9100. Off by default; it has no authentication, so keep it on loopback.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<String>,
    /// Milliseconds between RTT probe packets [default: 2000, the spec's].
    #[arg(long, value_name = "MS")]
    pub probe_interval_ms: Option<u64>,
    /// Seconds without an RTT reply before a server counts as dead [default: 30, the spec's].
    #[arg(long = "dead-after", value_name = "SECS")]
    pub dead_after_s: Option<f64>,
    /// Seconds between RTT measurement rounds [default: 60].
    #[arg(long = "reprobe", value_name = "SECS")]
    pub reprobe_s: Option<f64>,
    /// New users one sponsoring server may add to this one per minute (a burst of ten minutes'
    /// worth); more are refused for now and offered again by later syncs [default: 60].
    #[arg(long, value_name = "N")]
    pub sponsored_users_per_minute: Option<f64>,
    /// Seconds between repair checks: a short exchange of what each side holds with one
    /// random server that is not a tree neighbour, so a server in the tree that does not
    /// forward cannot cut the federation [default: 10]. 0 turns them off.
    #[arg(long = "repair", value_name = "SECS")]
    pub repair_s: Option<f64>,
    /// LAB ONLY: one-way delay in milliseconds added to everything sent to a peer
    /// (`"host:port" = ms`), to emulate WAN links in tests and demos. Never use in production.
    /// On the command line: `--lab-link-delay HOST:PORT=MS`.
    #[arg(skip)]
    pub lab_link_delay_ms: Option<std::collections::HashMap<String, u64>>,
}

impl FileConfig {
    /// Reads a TOML config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| ConfigError(format!("invalid config file {}: {e}", path.display())))
    }

    /// Fields set in `over` replace those in `self` (flags win over the file). Generic over
    /// the fields, so a new setting needs no change here.
    pub fn merge(self, over: FileConfig) -> FileConfig {
        let (Ok(serde_json::Value::Object(mut base)), Ok(serde_json::Value::Object(over))) =
            (serde_json::to_value(&self), serde_json::to_value(&over))
        else {
            unreachable!("a struct of options serialises to an object");
        };
        for (k, v) in over {
            if !v.is_null() {
                base.insert(k, v);
            }
        }
        serde_json::from_value(serde_json::Value::Object(base))
            .expect("the merge of two valid settings is valid")
    }
}

/// How a link resyncs when it comes up (`docs/federation.md`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SyncMethod {
    /// Range-based reconciliation with peers that offer it; `eventCounts` with the others.
    #[default]
    Range,
    /// The spec's `eventCounts` exchange only.
    EventCounts,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Host name in this server's canonical identity.
    pub name: String,
    /// Requested base port.
    pub base_port: u16,
    /// Exit rather than move to another base port.
    pub strict_ports: bool,
    /// Bind address.
    pub bind: std::net::IpAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Frame size limit.
    pub max_frame: usize,
    /// Client connection limit.
    pub max_clients: usize,
    /// Per-connection outbound queue length.
    pub outbound_queue: usize,
    /// Silence before a keepalive ping.
    pub keepalive: Duration,
    /// Silence before a client is declared gone.
    pub idle_timeout: Duration,
    /// Registration UserID lock lifetime.
    pub uid_lock: Duration,
    /// Time a connection has to log in.
    pub login_deadline: Duration,
    /// Registrations per address per minute (and burst).
    pub registrations_per_minute: f64,
    /// New users admitted per sponsoring server per minute.
    pub sponsored_users_per_minute: f64,
    /// What one client connection may send a second.
    pub client_inbound: crate::budget::InboundRate,
    /// How links resync at link-up.
    pub sync: SyncMethod,
    /// Servers to join at start.
    pub peers: Vec<(String, u16)>,
    /// Admission policy for servers.
    pub federation: crate::federation::keyring::Admission,
    /// Keys admitted in allowlist mode.
    pub allowed_keys: std::collections::BTreeSet<gossip_common::PublicKey>,
    /// Admin socket path.
    pub admin_socket: PathBuf,
    /// Blacklist entries from the config file.
    pub blacklist: Vec<String>,
    /// Protocol trace file, if enabled.
    pub trace: Option<PathBuf>,
    /// The HTTP listener's address (`/metrics`, `/healthz`, `/readyz`), if enabled.
    pub http: Option<std::net::SocketAddr>,
    /// RTT prober settings.
    pub probe: gossip_common::rtt::ProbeConfig,
    /// Time between measurement rounds.
    pub reprobe: Duration,
    /// Time between repair checks (zero: none).
    pub repair: Duration,
    /// Lab link emulation (empty in production).
    pub lab: gossip_common::rtt::LabDelays,
}

impl Config {
    /// Applies defaults and checks values.
    pub fn from_file_config(f: FileConfig) -> Result<Config, ConfigError> {
        let name = match f.name {
            Some(n) if !n.trim().is_empty() => n.trim().to_owned(),
            Some(_) => return Err(ConfigError("name must not be empty".into())),
            None => default_host_name(),
        };
        let base_port = f.base_port.unwrap_or(1024);
        ensure!(
            base_port <= u16::MAX - 2,
            "base port {base_port} leaves no room for P+1 and P+2"
        );
        let bind = f
            .bind
            .as_deref()
            .unwrap_or("0.0.0.0")
            .parse()
            .map_err(|e| ConfigError(format!("bind address: {e}")))?;
        let secs = |v: Option<f64>, default: f64, what: &str| -> Result<Duration, ConfigError> {
            let v = v.unwrap_or(default);
            ensure!(
                v > 0.0 && v.is_finite(),
                "{what} must be a positive number of seconds"
            );
            Ok(Duration::from_secs_f64(v))
        };
        let keepalive = secs(f.keepalive_s, 10.0, "keepalive_s")?;
        let idle_timeout = secs(f.idle_timeout_s, 30.0, "idle_timeout_s")?;
        ensure!(
            keepalive < idle_timeout,
            "keepalive_s must be shorter than idle_timeout_s"
        );
        let max_frame = f
            .max_frame
            .unwrap_or(gossip_common::codec::DEFAULT_MAX_FRAME);
        ensure!(max_frame >= 1024, "max_frame must be at least 1024 bytes");
        let peers = f
            .peers
            .unwrap_or_default()
            .iter()
            .map(|p| parse_server(p))
            .collect::<Result<Vec<_>, _>>()?;
        let probe = gossip_common::rtt::ProbeConfig {
            interval: Duration::from_millis(f.probe_interval_ms.unwrap_or(2000).max(1)),
            replies: 3,
            dead_after: secs(f.dead_after_s, 30.0, "dead_after_s")?,
            // Probes leave from the bound address, like the server links.
            source: Some(bind),
        };
        let reprobe = secs(f.reprobe_s, 60.0, "reprobe_s")?;
        let repair = match f.repair_s {
            Some(0.0) => Duration::ZERO,
            s => secs(s, 10.0, "repair_s")?,
        };
        let mut lab = std::collections::HashMap::new();
        for (peer, ms) in f.lab_link_delay_ms.unwrap_or_default() {
            let (host, port) = parse_server(&peer)?;
            lab.insert(format!("{host}:{port}"), Duration::from_millis(ms));
        }
        let data_dir = f.data_dir.unwrap_or_else(|| PathBuf::from("gossip-data"));
        let allowed_keys: std::collections::BTreeSet<gossip_common::PublicKey> = f
            .allowed_keys
            .unwrap_or_default()
            .iter()
            .map(|k| {
                k.parse().map_err(|e| {
                    ConfigError(format!(
                        "allowed key {k:?}: {e} (use the key `prodserver servers` shows)"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let federation = f.federation.unwrap_or_default();
        ensure!(
            federation != crate::federation::keyring::Admission::Allowlist
                || !allowed_keys.is_empty(),
            "federation = \"allowlist\" needs at least one allowed key (allow_key / --allow-key)"
        );
        Ok(Config {
            federation,
            allowed_keys,
            admin_socket: f
                .admin_socket
                .unwrap_or_else(|| data_dir.join("admin.sock")),
            blacklist: f.blacklist.unwrap_or_default(),
            trace: f.trace,
            http: match f.http.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(text) => Some(text.parse().map_err(|_| {
                    ConfigError(format!(
                        "http = {text:?}: expected ADDR:PORT, e.g. 127.0.0.1:9100 ([::1]:9100 for IPv6)"
                    ))
                })?),
            },
            peers,
            probe,
            reprobe,
            repair,
            lab: gossip_common::rtt::LabDelays::new(lab),
            name,
            base_port,
            strict_ports: f.strict_ports.unwrap_or(false),
            bind,
            data_dir,
            max_frame,
            max_clients: f.max_clients.unwrap_or(18_000).max(1),
            outbound_queue: f.outbound_queue.unwrap_or(1024).max(4),
            keepalive,
            idle_timeout,
            uid_lock: Duration::from_secs(f.uid_lock_s.unwrap_or(900)),
            sync: f.sync.unwrap_or_default(),
            login_deadline: Duration::from_secs_f64(f.login_deadline_s.unwrap_or(60.0).max(0.1)),
            registrations_per_minute: f.registrations_per_minute.unwrap_or(30.0).max(1.0),
            sponsored_users_per_minute: f.sponsored_users_per_minute.unwrap_or(60.0).max(1.0),
            client_inbound: crate::budget::InboundRate::per_second(
                f.client_frames_per_s.unwrap_or(200.0).max(1.0),
                f.client_kib_per_s.unwrap_or(1024.0).max(1.0),
            ),
        })
    }

    /// A config for tests: loopback, given data dir and base port, short timers.
    pub fn for_tests(data_dir: &Path, base_port: u16) -> Config {
        let mut c = Config::from_file_config(FileConfig {
            name: Some("127.0.0.1".into()),
            base_port: Some(base_port),
            bind: Some("127.0.0.1".into()),
            data_dir: Some(data_dir.to_owned()),
            ..FileConfig::default()
        })
        .expect("valid test config");
        c.keepalive = Duration::from_millis(500);
        c.idle_timeout = Duration::from_secs(2);
        c
    }
}

/// Parses `host:port` (a server's identity: host name and base port).
pub fn parse_server(s: &str) -> Result<(String, u16), ConfigError> {
    crate::mst::parse_id(s).map_err(|why| match why {
        "must be HOST:PORT" => ConfigError(format!("server {s:?} must be HOST:PORT")),
        why => ConfigError(format!("server {s:?}: {why}")),
    })
}

fn default_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file() {
        let file: FileConfig = toml::from_str("base_port = 2000\nname = \"a.example\"").unwrap();
        let flags = FileConfig {
            base_port: Some(3000),
            ..FileConfig::default()
        };
        let c = Config::from_file_config(file.merge(flags)).unwrap();
        assert_eq!(c.base_port, 3000);
        assert_eq!(c.name, "a.example");
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(toml::from_str::<FileConfig>("no_such_option = 1").is_err());
        let f = FileConfig {
            keepalive_s: Some(40.0),
            ..FileConfig::default()
        };
        assert!(Config::from_file_config(f).is_err());
        let f = FileConfig {
            base_port: Some(65535),
            ..FileConfig::default()
        };
        assert!(Config::from_file_config(f).is_err());
    }
}

#[cfg(test)]
mod flag_tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        settings: FileConfig,
    }

    #[test]
    fn one_struct_reads_flags_and_files_alike() {
        let flags = Flags::try_parse_from([
            "gossipd",
            "--strict-ports",
            "--peer",
            "a.example:1024",
            "--peer",
            "b.example:2048",
            "--keepalive",
            "5",
            "--blacklist",
            "10.0.0.0/8",
        ])
        .unwrap()
        .settings;
        assert_eq!(flags.strict_ports, Some(true));
        assert_eq!(flags.keepalive_s, Some(5.0));
        let file: FileConfig =
            toml::from_str("keepalive_s = 8.0\nidle_timeout_s = 40.0\nname = \"f\"").unwrap();
        let merged = file.merge(flags);
        assert_eq!(merged.keepalive_s, Some(5.0), "the flag wins");
        assert_eq!(merged.idle_timeout_s, Some(40.0), "the file fills the rest");
        assert_eq!(merged.name.as_deref(), Some("f"));
        let c = Config::from_file_config(merged).unwrap();
        assert!(c.strict_ports);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.blacklist, vec!["10.0.0.0/8".to_owned()]);
        // Nothing given: nothing set.
        let none = Flags::try_parse_from(["gossipd"]).unwrap().settings;
        assert_eq!(none.strict_ports, None);
        assert_eq!(none.peers, None);
    }

    /// `dist/gossipd.toml`: it parses, it names every option (set, or commented out where the
    /// default depends on the machine), and every option it sets is at its default.
    #[test]
    fn the_example_config_names_every_option_at_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/gossipd.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let example = FileConfig::load(&path).unwrap();
        let serde_json::Value::Object(fields) =
            serde_json::to_value(FileConfig::default()).unwrap()
        else {
            panic!("options serialise to an object");
        };
        for name in fields.keys() {
            let mentioned = text.lines().any(|l| {
                let l = l.trim_start_matches('#').trim().trim_start_matches('[');
                l.starts_with(&format!("{name} =")) || l.starts_with(&format!("{name}]"))
            });
            assert!(mentioned, "dist/gossipd.toml does not mention {name}");
        }
        let effective = Config::from_file_config(example).unwrap();
        let defaults = Config::from_file_config(FileConfig::default()).unwrap();
        assert_eq!(format!("{effective:?}"), format!("{defaults:?}"));
    }
}
