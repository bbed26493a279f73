//! `exfil-sensor top`: a live terminal view of the top talkers of a running agent. A sampler
//! thread asks the agent for `/api/v1/services` every second; the main thread turns the
//! answers into rates (`state`), draws them (`render`) and reads the keyboard.

mod render;
mod state;

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use ratatui::{
    DefaultTerminal,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
};
use thiserror::Error;

use state::TopState;

use crate::{
    api::ServiceRecord,
    client::{self, ClientError},
};

const SERVICES_PATH: &str = "/api/v1/services";
/// The agent reads the kernel's sums once a second (`agent.poll_interval`'s default).
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a key may wait for the screen to answer.
const KEY_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Error)]
pub enum TopError {
    #[error("cannot use the terminal: {0}")]
    Terminal(std::io::Error),
    #[error("cannot start the sampler: {0}")]
    Sampler(std::io::Error),
}

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Quit,
    Up,
    Down,
}

/// One answer (or failure) from the agent and when it arrived.
struct Sample {
    at: Instant,
    result: Result<Vec<ServiceRecord>, ClientError>,
}

/// Runs until `q`, Esc or Ctrl-C. An unreachable agent is shown, and asked again every
/// second; only a terminal that cannot be used ends the view with an error.
pub fn run(socket: &Path) -> Result<(), TopError> {
    let samples = spawn_sampler(socket.to_path_buf())?;
    // `try_init` also installs a panic hook that restores the terminal before the message.
    let mut terminal = ratatui::try_init().map_err(|e| {
        // Raw mode may be on even though the alternate screen failed.
        let _ = ratatui::try_restore();
        TopError::Terminal(e)
    })?;
    let restore = RestoreTerminal;
    let shown = show(&mut terminal, socket, &samples);
    drop(restore);
    shown
}

/// Leaves raw mode and the alternate screen however the view ends.
struct RestoreTerminal;

impl Drop for RestoreTerminal {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn show(
    terminal: &mut DefaultTerminal,
    socket: &Path,
    samples: &mpsc::Receiver<Sample>,
) -> Result<(), TopError> {
    let mut state = TopState::default();
    loop {
        while let Ok(sample) = samples.try_recv() {
            match sample.result {
                Ok(records) => state.observe(records, sample.at),
                Err(error) => state.fail(error.to_string()),
            }
        }
        terminal
            .draw(|frame| render::draw(frame, &state, socket, SystemTime::now()))
            .map_err(TopError::Terminal)?;
        if !event::poll(KEY_POLL).map_err(TopError::Terminal)? {
            continue;
        }
        if let Event::Key(key) = event::read().map_err(TopError::Terminal)? {
            match action(key) {
                Some(Action::Quit) => return Ok(()),
                Some(Action::Up) => state.select_previous(),
                Some(Action::Down) => state.select_next(),
                None => {}
            }
        }
    }
}

fn action(key: KeyEvent) -> Option<Action> {
    if key.kind != KeyEventKind::Press {
        return None;
    }
    match key.code {
        // Raw mode turns Ctrl-C into a key rather than a signal.
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Some(Action::Quit),
        KeyCode::Char('q') | KeyCode::Esc => Some(Action::Quit),
        KeyCode::Up | KeyCode::Char('k') => Some(Action::Up),
        KeyCode::Down | KeyCode::Char('j') => Some(Action::Down),
        _ => None,
    }
}

/// Asks the agent once a second, on a thread of its own so that a slow or stuck agent never
/// freezes the keyboard. The thread ends at its first send after the view has closed.
fn spawn_sampler(socket: PathBuf) -> Result<mpsc::Receiver<Sample>, TopError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(TopError::Sampler)?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("top-sampler".into())
        .spawn(move || {
            let mut next = Instant::now();
            loop {
                let result = runtime.block_on(client::get_json(&socket, SERVICES_PATH));
                if tx
                    .send(Sample {
                        at: Instant::now(),
                        result,
                    })
                    .is_err()
                {
                    return;
                }
                // On schedule, without a burst of catch-up requests after a slow answer.
                next = (next + SAMPLE_INTERVAL).max(Instant::now());
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
        .map_err(TopError::Sampler)?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    #[test]
    fn keys() {
        assert_eq!(
            action(key(KeyCode::Char('q'), KeyModifiers::NONE)),
            Some(Action::Quit)
        );
        assert_eq!(
            action(key(KeyCode::Esc, KeyModifiers::NONE)),
            Some(Action::Quit)
        );
        assert_eq!(
            action(key(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(action(key(KeyCode::Char('c'), KeyModifiers::NONE)), None);
        assert_eq!(
            action(key(KeyCode::Char('j'), KeyModifiers::NONE)),
            Some(Action::Down)
        );
        assert_eq!(
            action(key(KeyCode::Up, KeyModifiers::NONE)),
            Some(Action::Up)
        );
    }
}
