//! The composer's `/commands`, parsed: what each takes, and a usage line when it is typed
//! wrong. Pure; the model carries them out.

/// A composer command (after the `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// `/status STATUS [message…]`
    Status {
        /// The status word.
        status: String,
        /// The rest of the line.
        message: Option<String>,
    },
    /// `/add WHO`: a UserID, a contact card, a nickname or e-mail, or the number of a
    /// `/find` result.
    Add(String),
    /// `/remove WHO`: a UserID or a contact's nickname.
    Remove(String),
    /// `/info [WHO]`: the selected contact without one.
    Info(Option<String>),
    /// `/find TEXT`: the directory search.
    Find(String),
    /// `/search [TEXT]`: the conversation's next older match (the last text again without one).
    Search(Option<String>),
    /// `/notify on|off`
    Notify(bool),
    /// `/help`
    Help,
    /// `/quit`
    Quit,
}

/// Parses a command line (without its `/`); the error says how to use it.
pub(crate) fn parse_command(line: &str) -> Result<Command, String> {
    if line.starts_with(char::is_whitespace) {
        // `/ TEXT`: a search, as in less and vi.
        let text = line.trim();
        return Ok(Command::Search((!text.is_empty()).then(|| text.to_owned())));
    }
    let line = line.trim();
    let (name, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    let needs = |usage: &str| -> Result<String, String> {
        if rest.is_empty() {
            Err(format!("usage: {usage}"))
        } else {
            Ok(rest.to_owned())
        }
    };
    match name {
        "status" => {
            let (status, message) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            if status.is_empty() {
                return Err("usage: /status online|away|busy|offline [message]".into());
            }
            let message = message.trim();
            Ok(Command::Status {
                status: status.to_owned(),
                message: (!message.is_empty()).then(|| message.to_owned()),
            })
        }
        "add" => needs("/add UID, card, nickname, e-mail or /find number").map(Command::Add),
        "remove" => needs("/remove UID or nickname").map(Command::Remove),
        "info" => Ok(Command::Info((!rest.is_empty()).then(|| rest.to_owned()))),
        "find" => needs("/find NAME (nickname, name, e-mail or place)").map(Command::Find),
        "search" | "" => Ok(Command::Search((!rest.is_empty()).then(|| rest.to_owned()))),
        "notify" => match rest {
            "on" => Ok(Command::Notify(true)),
            "off" => Ok(Command::Notify(false)),
            _ => Err("usage: /notify on|off".into()),
        },
        "help" => Ok(Command::Help),
        "quit" | "exit" => Ok(Command::Quit),
        other => Err(format!("unknown command /{other}; /help lists them")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_or_say_how_to_use_them() {
        assert_eq!(
            parse_command("status away out for  lunch"),
            Ok(Command::Status {
                status: "away".into(),
                message: Some("out for  lunch".into())
            })
        );
        assert_eq!(parse_command("add bob"), Ok(Command::Add("bob".into())));
        let card = "alice <gossip:42?fp=0123456789abcdef0123456789abcdef>";
        assert_eq!(
            parse_command(&format!("add {card}")),
            Ok(Command::Add(card.into())),
            "a card is taken whole"
        );
        assert!(parse_command("add").unwrap_err().starts_with("usage: /add"));
        assert_eq!(parse_command("info"), Ok(Command::Info(None)));
        assert_eq!(
            parse_command("find alice oxford"),
            Ok(Command::Find("alice oxford".into()))
        );
        assert_eq!(
            parse_command("search lunch"),
            Ok(Command::Search(Some("lunch".into())))
        );
        assert_eq!(
            parse_command(" lunch"),
            Ok(Command::Search(Some("lunch".into()))),
            "`/ TEXT`"
        );
        assert_eq!(parse_command("search"), Ok(Command::Search(None)));
        assert_eq!(parse_command("notify on"), Ok(Command::Notify(true)));
        assert!(parse_command("notify maybe").is_err());
        assert!(parse_command("frobnicate").unwrap_err().contains("/help"));
        assert_eq!(parse_command("exit"), Ok(Command::Quit));
    }
}
