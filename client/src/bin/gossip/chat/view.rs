//! Drawing the [`Model`]: contact pane, conversation pane, composer, status line and help bar.
//! Pure rendering (ratatui), so it fits 80×24 and redraws cleanly at any size. Every presence
//! state has a symbol and a word besides its colour, so the screen reads the same with
//! `NO_COLOR`.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph, Wrap};
use ratatui::Frame;

use super::model::{clock, Contact, Focus, Found, Model, CONTACTS_WIDTH, HELP};

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
        Constraint::Length(m.composer_rows() as u16 + 2),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .split(f.area());
    let panes = Layout::horizontal([Constraint::Length(CONTACTS_WIDTH), Constraint::Min(12)])
        .split(rows[0]);
    contacts(f, m, theme, panes[0]);
    match &m.found {
        Some(found) => directory(f, found, theme, panes[1]),
        None => conversation(f, m, theme, panes[1]),
    }
    composer(f, m, theme, rows[1]);
    status_line(f, m, theme, rows[2]);
    f.render_widget(
        Paragraph::new(HELP).style(theme.fg(Color::DarkGray)),
        rows[3],
    );
}

/// The border of a pane, bold when it has the keyboard.
fn pane(title: String, focused: bool) -> Block<'static> {
    let block = Block::default().borders(Borders::ALL).title(title);
    if focused {
        block.border_style(Style::default().add_modifier(Modifier::BOLD))
    } else {
        block
    }
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
    let focused = m.focus == Focus::Contacts;
    let title = format!(
        "{}Contacts {online}/{} online ",
        if focused { " ▶ " } else { " " },
        sorted.len()
    );
    f.render_widget(List::new(items).block(pane(title, focused)), area);
}

fn conversation(f: &mut Frame, m: &Model, theme: Theme, area: Rect) {
    let Some((uid, c)) = m.selected.and_then(|s| m.contacts.get(&s).map(|c| (s, c))) else {
        f.render_widget(
            Paragraph::new("Find someone with /find NAME, then /add them.")
                .wrap(Wrap { trim: false })
                .block(pane(" no conversation ".into(), false)),
            area,
        );
        return;
    };
    let (symbol, _) = presence(&c.status, c.online);
    let mut title = format!(" {} {symbol} {}", c.nick, c.status);
    if !c.message.is_empty() {
        title.push_str(&format!(": {}", c.message));
    }
    title.push(' ');
    let state = m.conversations.get(&uid);
    if let Some(s) = state.filter(|s| s.scroll > 0) {
        title.push_str(&match s.unseen {
            0 => " ↑ scrolled back (PgDn) ".to_owned(),
            n => format!(" ↓ {n} new (PgDn) "),
        });
    } else if state.is_some_and(|s| s.loading) {
        title.push_str(" loading… ");
    }
    let hit = state.and_then(|s| s.hit);
    let lines: Vec<Line> = m
        .visible_rows(uid)
        .into_iter()
        .map(|row| {
            let style = if row.line.is_some() && row.line == hit {
                Style::default().add_modifier(Modifier::REVERSED)
            } else {
                Style::default()
            };
            if row.line.is_none() {
                return Line::styled(
                    row.text,
                    theme.fg(Color::Yellow).add_modifier(Modifier::BOLD),
                );
            }
            let split = row
                .text
                .char_indices()
                .nth(row.prefix)
                .map_or(row.text.len(), |(i, _)| i);
            let (prefix, text) = row.text.split_at(split);
            let who = if row.mine {
                Color::Cyan
            } else {
                Color::Magenta
            };
            // The prefix is `HH:MM who: `: the time dim, the name coloured.
            let (time, name) = prefix.split_at(prefix.find(' ').map_or(0, |i| i + 1));
            Line::from(vec![
                Span::styled(time.to_owned(), theme.fg(Color::DarkGray)),
                Span::styled(name.to_owned(), theme.fg(who)),
                Span::raw(text.to_owned()),
            ])
            .style(style)
        })
        .collect();
    f.render_widget(Paragraph::new(lines).block(pane(title, false)), area);
}

/// The directory's results, numbered for `/add N`.
fn directory(f: &mut Frame, found: &Found, theme: Theme, area: Rect) {
    let items: Vec<ListItem> = found
        .people
        .iter()
        .enumerate()
        .map(|(i, p)| {
            ListItem::new(Line::from(vec![
                Span::styled(format!("{:>2}. ", i + 1), theme.fg(Color::Yellow)),
                Span::raw(p.about.clone()),
            ]))
        })
        .collect();
    let title = format!(" found for {:?}: /add NUMBER · Esc closes ", found.query);
    f.render_widget(List::new(items).block(pane(title, false)), area);
}

fn composer(f: &mut Frame, m: &Model, theme: Theme, area: Rect) {
    let width = area.width.saturating_sub(2) as usize;
    let (rows, (row, col)) = m.composer.layout(width);
    // Keep the cursor's row in view when the text is taller than the composer.
    let height = area.height.saturating_sub(2) as usize;
    let first = (row + 1).saturating_sub(height);
    let shown: Vec<Line> = rows
        .into_iter()
        .skip(first)
        .take(height)
        .map(Line::from)
        .collect();
    let focused = m.focus == Focus::Composer;
    let title = match m.selected.and_then(|s| m.contacts.get(&s)) {
        Some(c) => format!(" to {} ", c.nick),
        None => " message or /command ".to_owned(),
    };
    let _ = theme;
    f.render_widget(Paragraph::new(shown).block(pane(title, focused)), area);
    if focused {
        f.set_cursor_position((area.x + 1 + col as u16, area.y + 1 + (row - first) as u16));
    }
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
