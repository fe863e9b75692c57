//! The keys of the app as the model understands them, and how the terminal's key events map
//! onto them: the keys of readline and of every chat client (Ctrl-A/E/W/U/K, Alt-B/F, word
//! moves on Ctrl-← →, Alt-↑ ↓ for contacts). Pure: `map_key` is unit-tested.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// A key press (or a paste, or a turn of the mouse wheel), as the model understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    /// A printable character.
    Char(char),
    /// Pasted text (bracketed paste).
    Paste(String),
    /// Enter: send the message or run the command.
    Enter,
    /// Delete the character before the cursor.
    Backspace,
    /// Delete the character under the cursor.
    Delete,
    /// Clear the composer, close the directory results, leave the contact list.
    Esc,
    /// Move the focus between the composer and the contact list.
    Tab,
    /// ←.
    Left,
    /// →.
    Right,
    /// Ctrl-←, Alt-B.
    WordLeft,
    /// Ctrl-→, Alt-F.
    WordRight,
    /// Home, Ctrl-A.
    Home,
    /// End, Ctrl-E.
    End,
    /// Ctrl-W, Alt-Backspace.
    DeleteWord,
    /// Ctrl-U.
    KillToStart,
    /// Ctrl-K.
    KillToEnd,
    /// ↑: the input history, or the previous contact when the list has the focus.
    Up,
    /// ↓: the input history forward, or the next contact.
    Down,
    /// Alt-↑: the previous contact, whatever has the focus.
    PrevContact,
    /// Alt-↓: the next contact.
    NextContact,
    /// Page Up: a screen back in the conversation.
    PageUp,
    /// Page Down: a screen forward.
    PageDown,
    /// The mouse wheel turned up.
    WheelUp,
    /// The mouse wheel turned down.
    WheelDown,
    /// Ctrl-C: quit.
    Interrupt,
}

/// A terminal key as the model's [`Key`], if the app has a use for it.
pub(crate) fn map_key(k: KeyEvent) -> Option<Key> {
    let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
    let alt = k.modifiers.contains(KeyModifiers::ALT);
    Some(match k.code {
        KeyCode::Char('c') if ctrl => Key::Interrupt,
        KeyCode::Char('a') if ctrl => Key::Home,
        KeyCode::Char('e') if ctrl => Key::End,
        KeyCode::Char('w') if ctrl => Key::DeleteWord,
        KeyCode::Char('u') if ctrl => Key::KillToStart,
        KeyCode::Char('k') if ctrl => Key::KillToEnd,
        KeyCode::Char('b') if alt => Key::WordLeft,
        KeyCode::Char('f') if alt => Key::WordRight,
        KeyCode::Char(_) if ctrl || alt => return None,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Backspace if alt || ctrl => Key::DeleteWord,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Delete => Key::Delete,
        KeyCode::Esc => Key::Esc,
        KeyCode::Tab | KeyCode::BackTab => Key::Tab,
        KeyCode::Left if ctrl || alt => Key::WordLeft,
        KeyCode::Right if ctrl || alt => Key::WordRight,
        KeyCode::Left => Key::Left,
        KeyCode::Right => Key::Right,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Up if alt || ctrl => Key::PrevContact,
        KeyCode::Down if alt || ctrl => Key::NextContact,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode, modifiers: KeyModifiers) -> Option<Key> {
        map_key(KeyEvent::new(code, modifiers))
    }

    #[test]
    fn readline_keys_edit_and_plain_keys_type() {
        let (none, ctrl, alt) = (KeyModifiers::NONE, KeyModifiers::CONTROL, KeyModifiers::ALT);
        assert_eq!(key(KeyCode::Char('w'), ctrl), Some(Key::DeleteWord));
        assert_eq!(key(KeyCode::Backspace, alt), Some(Key::DeleteWord));
        assert_eq!(key(KeyCode::Char('a'), ctrl), Some(Key::Home));
        assert_eq!(key(KeyCode::Char('b'), alt), Some(Key::WordLeft));
        assert_eq!(key(KeyCode::Left, ctrl), Some(Key::WordLeft));
        assert_eq!(key(KeyCode::Up, alt), Some(Key::PrevContact));
        assert_eq!(key(KeyCode::Up, none), Some(Key::Up));
        assert_eq!(
            key(KeyCode::Char('W'), KeyModifiers::SHIFT),
            Some(Key::Char('W'))
        );
        assert_eq!(key(KeyCode::Char('c'), ctrl), Some(Key::Interrupt));
        assert_eq!(key(KeyCode::Char('z'), ctrl), None, "unbound, not typed");
        assert_eq!(key(KeyCode::F(5), none), None);
    }
}
