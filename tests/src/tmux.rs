//! A program running in a real terminal under `tmux`, for tests of the interactive client: keys
//! are typed with `send-keys` and the screen is read with `capture-pane`. Each session gets a
//! tmux server of its own (`-L`), killed when dropped, so tests never touch anyone's sessions.

use std::process::Command;
use std::time::{Duration, Instant};

/// One detached tmux session running one command.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` (argv) in a `width`×`height` terminal with `env` set.
    pub fn start(
        name: &str,
        width: u16,
        height: u16,
        command: &[String],
        env: &[(&str, &str)],
    ) -> Tmux {
        let socket = format!("gossip-test-{}-{name}", std::process::id());
        let mut cmd = Command::new("tmux");
        cmd.args([
            "-L",
            &socket,
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            name,
        ])
        .args(["-x", &width.to_string(), "-y", &height.to_string()]);
        for (k, v) in env {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        cmd.args(command);
        let status = cmd.status().expect(
            "tmux is needed for the terminal tests (.ci/run installs it: apt-get install tmux)",
        );
        assert!(status.success(), "tmux new-session failed");
        Tmux { socket }
    }

    /// The screen as text, one line per row.
    pub fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` literally, then presses Enter if `enter`.
    pub fn type_text(&self, text: &str, enter: bool) {
        let ok = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-l", text])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tmux send-keys");
        if enter {
            self.key("Enter");
        }
    }

    /// Presses a named key (`Enter`, `Up`, `C-c`, …).
    pub fn key(&self, key: &str) {
        let ok = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", key])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tmux send-keys {key}");
    }

    /// Waits until the screen satisfies `pred`; returns how long it took, or panics with the
    /// screen after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> Duration {
        let t0 = Instant::now();
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the session's program is still running.
    pub fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket, "has-session"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
