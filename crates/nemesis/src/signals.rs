//! SIGINT, SIGTERM and SIGHUP become a flag the harness polls, so that an interrupted run still
//! tears down everything it made (the workspace forbids `unsafe`, so tokio's safe signal
//! handling does the registering, on a thread of its own).

use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a termination signal arrived.
#[derive(Clone)]
pub struct Interrupted(Arc<AtomicBool>);

impl Interrupted {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A flag no signal sets (tests, and subcommands that need no teardown).
    pub fn never() -> Self {
        Interrupted(Arc::new(AtomicBool::new(false)))
    }
}

/// Installs the handlers before returning; later signals only set the flag again.
pub fn install() -> Result<Interrupted> {
    use tokio::signal::unix::{SignalKind, signal};
    let flag = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal thread's runtime")?;
    let (mut int, mut term, mut hup) = {
        let _guard = runtime.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        )
    };
    let set = flag.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                loop {
                    let name = tokio::select! {
                        _ = int.recv() => "SIGINT",
                        _ = term.recv() => "SIGTERM",
                        _ = hup.recv() => "SIGHUP",
                    };
                    if !set.swap(true, Ordering::Relaxed) {
                        eprintln!("triarch-nemesis: {name}: stopping and tearing down");
                    }
                }
            })
        })
        .context("starting the signal thread")?;
    Ok(Interrupted(flag))
}
