//! Drawing the [`Model`]: contact pane, conversation pane, composer, status line and help bar.
//! Pure rendering (ratatui), so it fits 80×24 and redraws cleanly at any size. Every presence
//! state has a symbol and a word besides its colour, so the screen reads the same with
//! `NO_COLOR`.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph, Wrap};
use ratatui::Frame;

use super::model::{clock, Contact, Delivery, Model, HELP};

/// Colours, or none (`NO_COLOR`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Theme {
    /// Whether to use colours at all.
    pub(crate) color: bool,
}

impl Theme {
    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }
}

/// Symbol and colour of a presence state.
fn presence(status: &str, online: bool) -> (&'static str, Color) {
    match status.to_ascii_lowercase().as_str() {
        _ if !online => ("○", Color::DarkGray),
        "online" => ("●", Color::Green),
        "away" => ("◐", Color::Yellow),
        "busy" | "dnd" => ("⊘", Color::Red),
        _ => ("●", Color::Cyan),
    }
}

/// Draws the whole screen.
pub(crate) fn draw(f: &mut Frame, m: &Model, theme: Theme) {
    let rows = Layout::vertical([
        Constraint::Min(4),
        Constraint::Length(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .split(f.area());
    let panes = Layout::horizontal([Constraint::Length(30), Constraint::Min(20)]).split(rows[0]);
    contacts(f, m, theme, panes[0]);
    conversation(f, m, theme, panes[1]);
    composer(f, m, rows[1]);
    status_line(f, m, theme, rows[2]);
    f.render_widget(
        Paragraph::new(HELP).style(theme.fg(Color::DarkGray)),
        rows[3],
    );
}

fn contact_item(c: &Contact, selected: bool, theme: Theme, width: usize) -> ListItem<'static> {
    let (symbol, colour) = presence(&c.status, c.online);
    let mut spans = vec![
        Span::styled(format!("{symbol} "), theme.fg(colour)),
        Span::raw(format!("{:<10.10} ", c.nick)),
        Span::styled(format!("{:<7.7}", c.status), theme.fg(colour)),
    ];
    if c.unread > 0 {
        spans.push(Span::styled(
            format!(" ({})", c.unread),
            Style::default().add_modifier(Modifier::BOLD),
        ));
    } else if !c.online {
        if let Some(at) = c.last_seen {
            spans.push(Span::raw(format!(" {}", clock(at))));
        }
    }
    let mut line = Line::from(spans);
    if selected {
        line = line.style(Style::default().add_modifier(Modifier::REVERSED));
    }
    let _ = width;
    ListItem::new(line)
}

fn contacts(f: &mut Frame, m: &Model, theme: Theme, area: Rect) {
    let sorted = m.sorted_contacts();
    let online = sorted.iter().filter(|c| c.online).count();
    let items: Vec<ListItem> = sorted
        .iter()
        .map(|c| contact_item(c, m.selected == Some(c.uid), theme, area.width as usize))
        .collect();
    let title = format!(" Contacts {online}/{} online ", sorted.len());
    f.render_widget(
        List::new(items).block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

fn conversation(f: &mut Frame, m: &Model, theme: Theme, area: Rect) {
    let (title, lines) = match m.selected.and_then(|s| m.contacts.get(&s).map(|c| (s, c))) {
        Some((uid, c)) => {
            let (symbol, _) = presence(&c.status, c.online);
            let mut title = format!(" {} {symbol} {}", c.nick, c.status);
            if !c.message.is_empty() {
                title.push_str(&format!(": {}", c.message));
            }
            title.push(' ');
            let lines: Vec<Line> = m
                .conversations
                .get(&uid)
                .map(|v| {
                    v.iter()
                        .map(|l| {
                            let who = if l.system {
                                "*".to_owned()
                            } else if l.mine {
                                "me".to_owned()
                            } else {
                                c.nick.clone()
                            };
                            let mut spans = vec![
                                Span::styled(
                                    format!("{} ", clock(l.at)),
                                    theme.fg(Color::DarkGray),
                                ),
                                Span::styled(
                                    format!("{who}: "),
                                    if l.mine {
                                        theme.fg(Color::Cyan)
                                    } else {
                                        theme.fg(Color::Magenta)
                                    },
                                ),
                                Span::raw(l.text.clone()),
                            ];
                            match &l.delivery {
                                Some(Delivery::Sending) => {
                                    spans.push(Span::styled(" …", theme.fg(Color::DarkGray)))
                                }
                                Some(Delivery::Delivered) => {
                                    spans.push(Span::styled(" ✓", theme.fg(Color::Green)))
                                }
                                Some(Delivery::Failed(why)) => spans
                                    .push(Span::styled(format!(" ✗ {why}"), theme.fg(Color::Red))),
                                None => {}
                            }
                            Line::from(spans)
                        })
                        .collect()
                })
                .unwrap_or_default();
            (title, lines)
        }
        None => (
            " no conversation ".to_owned(),
            vec![Line::from(
                "Add a contact with /add UID, then select it with ↑↓.",
            )],
        ),
    };
    // Show the end of the conversation: as many wrapped lines as fit.
    let height = area.height.saturating_sub(2) as usize;
    let skip = lines.len().saturating_sub(height);
    f.render_widget(
        Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>())
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

fn composer(f: &mut Frame, m: &Model, area: Rect) {
    let width = area.width.saturating_sub(2) as usize;
    let chars: Vec<char> = m.composer.chars().collect();
    // Keep the end of a long line in view.
    let shown: String = chars[chars.len().saturating_sub(width.saturating_sub(1))..]
        .iter()
        .collect();
    let title = match m.selected.and_then(|s| m.contacts.get(&s)) {
        Some(c) => format!(" to {} ", c.nick),
        None => " message or /command ".to_owned(),
    };
    f.render_widget(
        Paragraph::new(shown.clone()).block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
    f.set_cursor_position((area.x + 1 + shown.chars().count() as u16, area.y + 1));
}

fn status_line(f: &mut Frame, m: &Model, theme: Theme, area: Rect) {
    let link = if m.connected {
        match m.rtt_ms {
            Some(rtt) => Span::styled(format!("{} {rtt:.1} ms", m.server), theme.fg(Color::Green)),
            None => Span::styled(m.server.clone(), theme.fg(Color::Green)),
        }
    } else {
        Span::styled(
            format!("no server ({}), retrying", m.server),
            theme.fg(Color::Red),
        )
    };
    let mut spans = vec![
        Span::raw(format!(" {} {} │ ", m.my_nick, m.my_status)),
        link,
        Span::raw(format!(" │ reconnects {}", m.reconnects)),
    ];
    if let Some(n) = &m.notice {
        spans.push(Span::styled(format!(" │ {n}"), theme.fg(Color::Yellow)));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}
