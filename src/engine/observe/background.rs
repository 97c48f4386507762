//! Background tasks with heartbeats, so health can tell a live loop from a
//! dead or stuck one.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::now_ms;

#[derive(Default)]
pub struct Background {
    tasks: Mutex<Vec<Task>>,
}

struct Task {
    name: &'static str,
    every: Duration,
    last_tick: Arc<AtomicI64>,
    last_error: Arc<Mutex<Option<String>>>,
    handle: JoinHandle<()>,
}

/// What health reports about one background task.
#[derive(Debug, Clone)]
pub struct TaskState {
    pub name: &'static str,
    pub running: bool,
    /// Milliseconds since the last completed tick (None before the first).
    pub since_last_tick_ms: Option<i64>,
    pub interval_ms: i64,
    pub last_error: Option<String>,
}

impl Background {
    /// Run `tick` now and then every `every` until `shutdown`. A failing tick
    /// is logged and retried at the next interval; it does not end the loop.
    pub fn spawn_periodic<F, Fut>(
        &self,
        name: &'static str,
        every: Duration,
        shutdown: CancellationToken,
        tick: F,
    ) where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = crate::error::Result<()>> + Send,
    {
        let last_tick = Arc::new(AtomicI64::new(0));
        let last_error = Arc::new(Mutex::new(None));
        let (lt, le) = (last_tick.clone(), last_error.clone());
        let handle = tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = interval.tick() => {}
                }
                let result = tick().await;
                let mut err = le.lock().unwrap_or_else(|p| p.into_inner());
                match result {
                    Ok(()) => *err = None,
                    Err(e) => {
                        tracing::warn!(task = name, error = %e, "background task tick failed");
                        *err = Some(e.to_string());
                    }
                }
                lt.store(now_ms(), Ordering::Relaxed);
            }
            tracing::debug!(task = name, "background task stopped");
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Task {
                name,
                every,
                last_tick,
                last_error,
                handle,
            });
    }

    pub fn states(&self) -> Vec<TaskState> {
        let now = now_ms();
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|t| {
                let lt = t.last_tick.load(Ordering::Relaxed);
                TaskState {
                    name: t.name,
                    running: !t.handle.is_finished(),
                    since_last_tick_ms: (lt > 0).then(|| now - lt),
                    interval_ms: t.every.as_millis() as i64,
                    last_error: t
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                }
            })
            .collect()
    }
}
