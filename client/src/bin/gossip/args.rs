//! The command line: every option and subcommand, as clap definitions. Their doc comments are
//! the `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use gossip_common::UserId;

/// Gossip chat client: register, set your status, manage contacts, watch presence, chat.
///
/// Your key and settings live in a profile directory (--home, default ~/.config/gossip or
/// $GOSSIP_HOME). Typical start:
///   gossip keygen
///   gossip register --server 127.0.0.1:1024 --nick alice
///   gossip find bob                  (or ask Bob for his `gossip whoami --card`)
///   gossip contacts add bob
///   gossip chat          (or just `gossip` on a terminal: the interactive app)
#[derive(Debug, Parser)]
#[command(name = "gossip", version, verbatim_doc_comment)]
pub(crate) struct Args {
    /// Profile directory holding the key and settings.
    #[arg(long, global = true, value_name = "DIR", env = "GOSSIP_HOME")]
    pub(crate) home: Option<PathBuf>,
    /// Server(s) to use, HOST:PORT (base port), comma-separated; overrides the profile. With
    /// several, the client measures their RTT and logs in to the nearest live one.
    #[arg(long, short = 's', global = true, value_name = "HOST:PORT[,…]")]
    pub(crate) server: Option<String>,
    /// Machine-readable output: JSON (one object per line for streams).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// Create a new key in the profile (file mode 0600).
    Keygen {
        /// Replace an existing key (the old identity is lost!).
        #[arg(long)]
        force: bool,
        /// Derive a portable key from USER and a password read from $GOSSIP_PASSWORD
        /// (argon2id): the same pair recreates it anywhere, but it is only as strong as the
        /// password.
        #[arg(long, value_name = "USER")]
        portable: Option<String>,
    },
    /// Register a new user with the profile's key; prints and stores the new UserID.
    Register {
        /// Nickname.
        #[arg(long)]
        nick: String,
        /// Full name.
        #[arg(long, default_value = "")]
        name: String,
        /// E-mail address.
        #[arg(long, default_value = "")]
        email: String,
        /// Location.
        #[arg(long, default_value = "")]
        location: String,
        /// Website.
        #[arg(long, default_value = "")]
        website: String,
    },
    /// Show the profile: UserID, public key, servers.
    Whoami {
        /// Print only your contact card, one line to give to people: they add you with
        /// `gossip contacts add "CARD"` (it carries your key's fingerprint, so they know the
        /// servers gave them the right key).
        #[arg(long)]
        card: bool,
    },
    /// Find people by nickname, name, e-mail or location: every word must start a word of
    /// theirs (case-insensitive), e.g. `gossip find bob`, `gossip find alice oxford`. Shows
    /// each match's UserID, whether they are online and their key's fingerprint.
    Find {
        /// What to look for.
        #[arg(required = true, value_name = "TEXT")]
        text: Vec<String>,
        /// How many matches at most (the server returns 50 at most).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show the conversation with a user (messages sent and received by this profile, with
    /// their delivery state), oldest first.
    History {
        /// The other user's UserID.
        uid: UserId,
        /// How many of the latest messages.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Accept a server's new identity key after its admin rotated it (compare it with
    /// `prodserver status` on that server first); replaces the key pinned for it.
    TrustServer {
        /// HOST:PORT (base port), as in your profile.
        server: String,
        /// The new key, 64 hex digits.
        key: String,
    },
    /// Set your status (online, away, busy, offline, or anything) and status message.
    SetStatus {
        /// The status.
        status: String,
        /// Status message.
        #[arg(long, short = 'm')]
        message: Option<String>,
    },
    /// Manage your contact list.
    Contacts {
        #[command(subcommand)]
        action: ContactsCmd,
    },
    /// Stay online and print every presence change and message as it arrives (Ctrl-C to go
    /// offline and quit).
    Watch {
        /// Status to announce.
        #[arg(long, default_value = "online")]
        status: String,
        /// Address to accept direct messages on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// The interactive terminal app: contacts with live presence, conversations, a composer
    /// with /commands (the default when `gossip` runs on a terminal without a command).
    Chat {
        /// Status to announce.
        #[arg(long, default_value = "online")]
        status: String,
        /// Address to accept direct messages on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Send a message, end-to-end encrypted and relayed through the servers: it arrives
    /// wherever and whenever the recipient next logs in (kept up to 30 days), and `watch`
    /// shows when it was delivered.
    Send {
        /// Recipient's UserID.
        uid: UserId,
        /// The message.
        text: String,
        /// Send straight to the contact's client instead (the spec's path: signed but not
        /// encrypted, and only while they are online and reachable).
        #[arg(long)]
        direct: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ContactsCmd {
    /// Add people to your contact list, each named by UserID, contact card (from their
    /// `gossip whoami --card`), nickname or e-mail. A name must match one person: who it is
    /// (with their key's fingerprint) is shown as they are added; if several match, they are
    /// listed and nothing is added.
    Add {
        /// UserIDs, cards, nicknames or e-mails.
        #[arg(required = true, value_name = "WHO")]
        who: Vec<String>,
    },
    /// Remove users from your contact list.
    Remove {
        /// UserIDs.
        #[arg(required = true)]
        uids: Vec<UserId>,
    },
    /// List your contacts with nickname and status.
    List,
}
