//! `tally-ctl batch FILE|-`: a file of commands, pipelined, resumable
//! exactly once.
//!
//! The whole file is read and checked first (every line parses, every SKU
//! and location resolves, the role may send every command): a bad line
//! stops the batch before anything is sent. Then the lines go out in order
//! with a window of commands in flight, each decision counted (rejections
//! printed with their line number).
//!
//! Exactly once: line `i` is sent as client_seq `base + i`, `base` being
//! kept in the state file ([`state`]) written before the first send. After
//! a crash, a SIGKILL or Ctrl-C, running the same command again logs in,
//! learns from the gateway the next client_seq it expects, and resumes at
//! the first line that was never sequenced. The batch's user must send
//! nothing else until the batch is complete (the numbering is the user's).

mod parse;
mod state;

use std::io::{BufReader, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tally_client::command::{reject_words, CommandClient, Decision, Request};

use crate::connect::{Failure, Global};
use crate::ops::clock_id;
use crate::{exit, output};
use parse::Batch;
use state::State;

/// `batch FILE|-`.
#[derive(Args, Debug)]
pub struct BatchArgs {
    /// The batch file (CSV or JSON lines; `-` reads standard input).
    pub file: PathBuf,
    /// The state file that makes the batch resumable (default: FILE.state;
    /// required when reading standard input).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Print a progress line to standard error this often (milliseconds).
    #[arg(long, value_name = "MS", default_value_t = 250)]
    pub progress_ms: u64,
}

/// Runs the batch; returns the exit status.
pub fn run(args: &BatchArgs, global: &Global) -> Result<u8, Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| Failure::new(exit::ERROR, format!("signal handler: {e}")))?;
    }
    let state_path = state_path(args)?;
    let batch = read_input(&args.file)?;
    let appliance = global.appliance()?;
    let mut client = global.command_client()?;
    let user = global.credentials()?.username;
    let loaded = State::load(&state_path).map_err(|e| Failure::new(exit::ERROR, e))?;
    let (state, start) = plan(loaded, &batch, &client, &appliance.stream.session, &user)?;
    let requests = resolve_all(&client, &batch, state.id_base)?;
    if state.complete {
        eprintln!(
            "tally-ctl: batch already complete ({} lines); nothing sent",
            requests.len()
        );
        return Ok(exit::ACCEPTED);
    }
    if start == 0 {
        state
            .save(&state_path)
            .map_err(|e| Failure::new(exit::ERROR, e))?;
    }
    let mut run = Run::new(&batch, &state, start, args, global.json);
    let finished = run.pipeline(&mut client, &requests, &stop, global.timeout())?;
    run.progress(true);
    if finished {
        let done = State {
            complete: true,
            ..state
        };
        done.save(&state_path)
            .map_err(|e| Failure::new(exit::ERROR, e))?;
    }
    client.logout();
    run.summary(finished);
    Ok(if !finished {
        exit::INTERRUPTED
    } else if run.rejected > 0 {
        exit::BATCH_REJECTIONS
    } else {
        exit::ACCEPTED
    })
}

fn state_path(args: &BatchArgs) -> Result<PathBuf, Failure> {
    if let Some(path) = &args.state {
        return Ok(path.clone());
    }
    if args.file == Path::new("-") {
        return Err(Failure::new(
            exit::BAD_INPUT,
            "reading standard input: give --state FILE (it makes the batch resumable)",
        ));
    }
    let mut name = args.file.as_os_str().to_os_string();
    name.push(".state");
    Ok(PathBuf::from(name))
}

fn read_input(file: &Path) -> Result<Batch, Failure> {
    let bad = |e: String| Failure::new(exit::BAD_INPUT, format!("{}: {e}", file.display()));
    if file == Path::new("-") {
        return parse::read(std::io::stdin().lock()).map_err(bad);
    }
    let opened = std::fs::File::open(file)
        .map_err(|e| Failure::new(exit::BAD_INPUT, format!("{}: {e}", file.display())))?;
    parse::read(BufReader::with_capacity(1 << 16, opened)).map_err(bad)
}

/// The state to run under and the first line to send: a new state for a
/// new batch, or the saved one with the lines the gateway already
/// sequenced skipped.
fn plan(
    loaded: Option<State>,
    batch: &Batch,
    client: &CommandClient,
    session: &str,
    user: &str,
) -> Result<(State, usize), Failure> {
    let next = client.next_client_seq();
    let lines = batch.lines.len() as u64;
    let Some(state) = loaded else {
        let state = State {
            file_xxh64: batch.xxh64,
            lines,
            session: session.to_string(),
            user: user.to_string(),
            base_client_seq: next,
            id_base: clock_id(),
            complete: false,
        };
        return Ok((state, 0));
    };
    let refuse = |text: String| Err(Failure::new(exit::ERROR, text));
    if state.file_xxh64 != batch.xxh64 || state.lines != lines {
        return refuse("the state file belongs to another batch file (its contents differ): remove the state file to run this one from its start".into());
    }
    if state.session != session {
        return refuse(format!("the state file belongs to session {:?}, the appliance runs {session:?}: numbering restarts with each session; remove the state file to run the batch again in this one", state.session));
    }
    if state.user != user {
        return refuse(format!(
            "the state file belongs to user {:?}: resume as that user",
            state.user
        ));
    }
    if state.complete {
        return Ok((state, batch.lines.len()));
    }
    let Some(done) = next.checked_sub(state.base_client_seq).map(u64::from) else {
        return refuse(format!("the gateway expects client_seq {next}, below the batch's first ({}): was the journal replaced?", state.base_client_seq));
    };
    if done > lines {
        return refuse(format!("user {user} sent {} commands beyond this batch's {lines} lines before it completed: the state cannot say which lines were applied", done - lines));
    }
    if done > 0 {
        eprintln!("tally-ctl: resuming at command line {} of {lines}: {done} were applied by an earlier run", done + 1);
    }
    Ok((state, done as usize))
}

/// Every line as a command, ids assigned where the line gave none.
fn resolve_all(
    client: &CommandClient,
    batch: &Batch,
    id_base: u64,
) -> Result<Vec<Request>, Failure> {
    let mut requests = Vec::with_capacity(batch.lines.len());
    for line in &batch.lines {
        let mut spec = line.spec.clone();
        if spec.creates_id() {
            if let Some(id) = spec.id_mut().filter(|id| **id == 0) {
                *id = id_base + line.number;
            }
        }
        let request = client.resolve(&spec).map_err(|e| {
            Failure::new(
                exit::BAD_INPUT,
                format!("line {}: {e} (nothing was sent)", line.number),
            )
        })?;
        requests.push(request);
    }
    Ok(requests)
}

/// One run over the batch: counts and output.
struct Run<'a> {
    batch: &'a Batch,
    base: u32,
    start: usize,
    sent: usize,
    decided: usize,
    accepted: u64,
    rejected: u64,
    reasons: [u64; 256],
    json: bool,
    progress_every: Duration,
    last_progress: Instant,
    terminal: bool,
}

impl<'a> Run<'a> {
    fn new(batch: &'a Batch, state: &State, start: usize, args: &BatchArgs, json: bool) -> Run<'a> {
        Run {
            batch,
            base: state.base_client_seq,
            start,
            sent: start,
            decided: start,
            accepted: 0,
            rejected: 0,
            reasons: [0; 256],
            json,
            progress_every: Duration::from_millis(args.progress_ms.max(10)),
            last_progress: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Sends from `start` on with a window in flight, until every line is
    /// decided (true) or a stop is asked for (false, after the commands in
    /// flight are decided).
    fn pipeline(
        &mut self,
        client: &mut CommandClient,
        requests: &[Request],
        stop: &AtomicBool,
        timeout: Duration,
    ) -> Result<bool, Failure> {
        let mut progress_at = Instant::now();
        let mut decided_before = self.decided;
        while self.decided < requests.len() {
            let stopping = stop.load(Ordering::Relaxed);
            if stopping && client.in_flight() == 0 {
                return Ok(false);
            }
            while !stopping && self.sent < requests.len() && client.has_room() {
                let client_seq = client.submit(&requests[self.sent])?;
                let expected = self.base as u64 + self.sent as u64;
                if u64::from(client_seq) != expected {
                    return Err(Failure::new(exit::ERROR, format!("line sent as client_seq {client_seq}, expected {expected}: the numbering moved under the batch")));
                }
                self.sent += 1;
            }
            client.flush();
            client.wait(Duration::from_millis(5), |decision| {
                self.on_decision(&decision)
            })?;
            if self.decided != decided_before {
                decided_before = self.decided;
                progress_at = Instant::now();
            } else if progress_at.elapsed() > timeout {
                return Err(Failure::new(
                    exit::NO_DECISION,
                    format!(
                        "no decision for {timeout:?} with {} commands in flight (line {} of {})",
                        client.in_flight(),
                        self.decided + 1,
                        requests.len()
                    ),
                ));
            }
            if self.last_progress.elapsed() >= self.progress_every {
                self.progress(false);
            }
        }
        Ok(true)
    }

    fn on_decision(&mut self, decision: &Decision) {
        self.decided += 1;
        let index = decision.client_seq.wrapping_sub(self.base) as usize;
        let number = self.batch.lines.get(index).map_or(0, |line| line.number);
        match decision.rejection() {
            None => self.accepted += 1,
            Some(rejection) => {
                self.rejected += 1;
                self.reasons[usize::from(rejection.reason)] += 1;
                if !self.json {
                    println!("line {number}: {decision}");
                }
            }
        }
        if self.json {
            let mut value = serde_json::to_value(decision).expect("decisions serialize");
            value["line"] = json!(number);
            value["exit_status"] = json!(exit::of_decision(decision));
            println!("{value}");
        }
    }

    fn progress(&mut self, last: bool) {
        self.last_progress = Instant::now();
        let total = self.batch.lines.len();
        let text = format!(
            "progress: sent {} decided {} of {total} (accepted {}, rejected {})",
            self.sent, self.decided, self.accepted, self.rejected
        );
        let mut stderr = std::io::stderr().lock();
        let _ = if self.terminal && !last {
            write!(stderr, "\r{text}")
        } else if self.terminal {
            writeln!(stderr, "\r{text}")
        } else {
            writeln!(stderr, "{text}")
        };
    }

    fn summary(&self, finished: bool) {
        let reasons: Vec<_> = (0..=255u8)
            .filter(|&r| self.reasons[usize::from(r)] > 0)
            .map(|r| (reject_words(r), self.reasons[usize::from(r)]))
            .collect();
        let total = self.batch.lines.len();
        if self.json {
            let by_reason: serde_json::Map<_, _> = reasons
                .iter()
                .map(|(w, n)| (w.to_string(), json!(n)))
                .collect();
            println!(
                "{}",
                json!({ "summary": {
                    "lines": total, "earlier_run": self.start, "sent": self.sent - self.start,
                    "accepted": self.accepted, "rejected": self.rejected, "rejected_by_reason": by_reason,
                    "complete": finished,
                }})
            );
            return;
        }
        let mut text = format!("batch: {total} lines");
        if self.start > 0 {
            text.push_str(&format!(", {} applied by an earlier run", self.start));
        }
        text.push_str(&format!(
            ", {} sent now: {} accepted, {} rejected",
            self.sent - self.start,
            self.accepted,
            self.rejected
        ));
        for (words, count) in &reasons {
            text.push_str(&format!(", {words} {count}"));
        }
        if !finished {
            text.push_str(&format!(
                "; interrupted after line {}: run the same command again to resume",
                self.sent
            ));
            output::error(&text, false, exit::INTERRUPTED);
            return;
        }
        println!("{text}");
    }
}
