//! Progress of a conversion, per layer and phase (download, apply, commit, upload), with bytes
//! and rates: a live table on a terminal, plain log lines otherwise (CI logs).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Download,
    Apply,
    Commit,
    Upload,
}

impl Phase {
    const ALL: [Phase; 4] = [Phase::Download, Phase::Apply, Phase::Commit, Phase::Upload];
    fn name(self) -> &'static str {
        match self {
            Phase::Download => "download",
            Phase::Apply => "apply",
            Phase::Commit => "commit",
            Phase::Upload => "upload",
        }
    }
}

/// Receives progress events (from several threads).
pub trait Progress: Send + Sync {
    /// A manifest with `sizes.len()` layers starts.
    fn start(&self, layers: usize, sizes: &[u64]);
    /// `bytes` done so far in a phase of layer `i`.
    fn bytes(&self, i: usize, phase: Phase, bytes: u64);
    fn done(&self, i: usize, phase: Phase);
    /// A phase of layer `i` had nothing to do (`why`: the blob is already at the destination).
    fn skipped(&self, i: usize, phase: Phase, why: &str);
    fn note(&self, msg: &str);
    fn finish(&self, manifest_digest: &str, elapsed: Duration);
}

/// Reports nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: usize, _: &[u64]) {}
    fn bytes(&self, _: usize, _: Phase, _: u64) {}
    fn done(&self, _: usize, _: Phase) {}
    fn skipped(&self, _: usize, _: Phase, _: &str) {}
    fn note(&self, _: &str) {}
    fn finish(&self, _: &str, _: Duration) {}
}

#[derive(Clone, Copy, Debug, Default)]
struct Cell {
    bytes: u64,
    started: Option<Instant>,
    finished: Option<Instant>,
}

#[derive(Debug)]
struct State {
    sizes: Vec<u64>,
    cells: Vec<[Cell; 4]>,
    drawn: usize,
    last_draw: Option<Instant>,
}

/// Writes to stderr: a redrawn table on a terminal, one line per finished phase otherwise.
#[derive(Debug)]
pub struct Reporter {
    tty: bool,
    state: Mutex<State>,
}

impl Default for Reporter {
    fn default() -> Self {
        Self::new(std::io::stderr().is_terminal())
    }
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

fn rate(c: &Cell, now: Instant) -> String {
    let Some(s) = c.started else {
        return String::new();
    };
    let secs = c
        .finished
        .unwrap_or(now)
        .duration_since(s)
        .as_secs_f64()
        .max(1e-3);
    format!("{:.1} MB/s", c.bytes as f64 / 1e6 / secs)
}

impl Reporter {
    pub fn new(tty: bool) -> Self {
        Reporter {
            tty,
            state: Mutex::new(State {
                sizes: Vec::new(),
                cells: Vec::new(),
                drawn: 0,
                last_draw: None,
            }),
        }
    }

    fn draw(&self, st: &mut State, force: bool) {
        let now = Instant::now();
        if !force
            && st
                .last_draw
                .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
        {
            return;
        }
        st.last_draw = Some(now);
        let mut out = String::new();
        if st.drawn > 0 {
            out.push_str(&format!("\x1b[{}A", st.drawn));
        }
        for (i, cells) in st.cells.iter().enumerate() {
            out.push_str(&format!(
                "\x1b[2Klayer {:>3}/{} {:>10}",
                i + 1,
                st.cells.len(),
                mb(st.sizes[i])
            ));
            for (p, c) in Phase::ALL.iter().zip(cells) {
                let mark = if c.finished.is_some() {
                    "done"
                } else if c.started.is_some() {
                    "..."
                } else {
                    ""
                };
                if c.started.is_some() {
                    out.push_str(&format!(
                        " | {} {} {} {mark}",
                        p.name(),
                        mb(c.bytes),
                        rate(c, now)
                    ));
                }
            }
            out.push('\n');
        }
        st.drawn = st.cells.len();
        let _ = std::io::stderr().write_all(out.as_bytes());
    }
}

impl Progress for Reporter {
    fn start(&self, layers: usize, sizes: &[u64]) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.sizes = sizes.to_vec();
        st.cells = vec![[Cell::default(); 4]; layers];
        st.drawn = 0;
        if !self.tty {
            eprintln!(
                "converting {layers} layers ({} compressed)",
                mb(sizes.iter().sum())
            );
        }
    }

    fn bytes(&self, i: usize, phase: Phase, bytes: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = st.cells.get_mut(i).map(|c| &mut c[phase as usize]) else {
            return;
        };
        c.started.get_or_insert_with(Instant::now);
        c.bytes = bytes;
        if self.tty {
            self.draw(&mut st, false);
        }
    }

    fn done(&self, i: usize, phase: Phase) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let n = st.cells.len();
        let Some(c) = st.cells.get_mut(i).map(|c| &mut c[phase as usize]) else {
            return;
        };
        let now = Instant::now();
        c.started.get_or_insert(now);
        c.finished = Some(now);
        let c = *c;
        if self.tty {
            self.draw(&mut st, true);
        } else {
            eprintln!(
                "layer {}/{n}: {} {} in {:.2} s ({})",
                i + 1,
                phase.name(),
                mb(c.bytes),
                now.duration_since(c.started.unwrap_or(now)).as_secs_f64(),
                rate(&c, now)
            );
        }
    }

    fn skipped(&self, i: usize, phase: Phase, why: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let n = st.cells.len();
        if let Some(c) = st.cells.get_mut(i).map(|c| &mut c[phase as usize]) {
            let now = Instant::now();
            c.started.get_or_insert(now);
            c.finished = Some(now);
        }
        st.drawn = 0;
        eprintln!("layer {}/{n}: {} skipped: {why}", i + 1, phase.name());
    }

    fn note(&self, msg: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.drawn = 0;
        eprintln!("{msg}");
    }

    fn finish(&self, digest: &str, elapsed: Duration) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.tty {
            self.draw(&mut st, true);
        }
        st.drawn = 0;
        eprintln!("manifest {digest} in {:.2} s", elapsed.as_secs_f64());
    }
}
