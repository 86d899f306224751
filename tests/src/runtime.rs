//! A tokio runtime living on its own thread inside a network namespace.
//!
//! The bed's servers (HTTP, TCP, DNS) run here: sockets take the namespace
//! of the thread that creates them, and a current-thread runtime runs every
//! task on that one thread. Tests drive the servers from any thread (even
//! from inside another runtime) with [`NsRuntime::run`]; dropping the
//! runtime drops every task, which closes every listener and connection.

use std::{
    future::Future,
    sync::{Arc, mpsc},
    thread::{self, JoinHandle},
};

use anyhow::{Context, Result, anyhow};
use tokio::{runtime::Handle, sync::oneshot};

use crate::netns::{self, Netns};

pub(crate) struct NsRuntime {
    label: String,
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NsRuntime {
    /// Starts the thread, enters `netns` and builds the runtime.
    pub(crate) fn start(netns: &Netns, label: &str) -> Result<NsRuntime> {
        let fd = Arc::clone(netns.fd());
        let ns_name = netns.name().to_owned();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name(label.to_owned())
            .spawn(move || {
                let runtime = netns::enter(&fd)
                    .with_context(|| format!("entering network namespace {ns_name}"))
                    .and_then(|()| {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .context("building a tokio runtime")
                    });
                match runtime {
                    Ok(runtime) => {
                        let _ = ready_tx.send(Ok(runtime.handle().clone()));
                        runtime.block_on(async {
                            let _ = stop_rx.await;
                        });
                        // Dropping `runtime` here drops every task.
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                    }
                }
            })
            .context("spawning a server thread")?;
        let handle = ready_rx
            .recv()
            .map_err(|_| anyhow!("{label}: server thread died while starting"))??;
        Ok(NsRuntime {
            label: label.to_owned(),
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Runs `fut` on the runtime thread (inside the namespace) and blocks
    /// the caller until it finishes.
    pub(crate) fn run<F>(&self, fut: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| anyhow!("{}: the task panicked or the runtime is gone", self.label))
    }

    /// Spawns `fut` on the runtime without waiting for it.
    pub(crate) fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("testbed: {} thread panicked", self.label);
        }
    }
}
