//! `gossip set-status`: a one-shot change of the own status and status message.

use gossip_client::GossipClient;
use serde_json::json;

use crate::args::{Args, Cmd};

/// `gossip set-status STATUS [-m MESSAGE]`, on a logged-in client.
pub(crate) async fn set_status(client: &GossipClient, args: &Args) -> anyhow::Result<()> {
    let Some(Cmd::SetStatus { status, message }) = &args.command else {
        unreachable!("set-status only")
    };
    client.set_status(status, message.as_deref()).await?;
    if args.json {
        println!("{}", json!({"status": status, "message": message}));
    } else {
        println!("status set to {status}");
    }
    Ok(())
}
