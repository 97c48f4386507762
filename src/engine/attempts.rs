//! The attempt loop shared by workflow steps and tasks: call the action, apply
//! the per-attempt timeout, retry retryable failures with backoff, and stop
//! when the owner's token is cancelled (abandoning an action that ignores it).

use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::workflows::spec::RetryPolicy;
use crate::actions::{ActionCtx, ActionError, Caller, PhaseHook, Registry};
use crate::error::{ErrorCode, Result};

/// How long a cancelled action may take to stop before it is abandoned.
pub const ABANDON_AFTER: Duration = Duration::from_secs(2);

/// What to run and how often.
pub struct Plan {
    pub module: String,
    pub action: String,
    /// Resolved parameters.
    pub params: Value,
    pub timeout_seconds: Option<u64>,
    pub max_retries: u32,
    pub retry: RetryPolicy,
    /// Attempts already made (before a restart); they count.
    pub prior_attempts: u32,
    /// For the action's context: the run (or task) id, the step (or task) name, the session.
    pub run_id: String,
    pub step: String,
    pub session_id: String,
    pub principal: String,
    pub caller: Caller,
    /// Where shell and fs actions start (the project folder of a project run).
    pub workdir: Option<std::path::PathBuf>,
}

/// How the attempts ended.
#[derive(Clone)]
pub enum Ending {
    Succeeded(Value),
    /// The last attempt failed (or the failure was not retryable).
    Failed {
        code: ErrorCode,
        message: String,
        timed_out: bool,
    },
    /// The owner's token was cancelled.
    Stopped {
        during_retry_wait: bool,
        abandoned: bool,
    },
}

/// Where the loop records each attempt's start and each retry.
pub trait Sink: Send {
    fn started(&mut self, attempt: u32) -> impl Future<Output = Result<()>> + Send;
    fn retrying(
        &mut self,
        attempt: u32,
        code: ErrorCode,
        message: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// How the action may report a state of its owner during this attempt.
    fn phase_hook(&self) -> Option<PhaseHook> {
        None
    }
}

/// Run the attempts to an ending. Returns the attempt count with it.
pub async fn run(
    registry: &std::sync::Arc<Registry>,
    plan: Plan,
    stop: &CancellationToken,
    sink: &mut impl Sink,
) -> Result<(u32, Ending)> {
    let max_attempts = (plan.max_retries + 1).max(plan.prior_attempts + 1);
    let mut attempt = plan.prior_attempts;
    loop {
        attempt += 1;
        sink.started(attempt).await?;
        // Stopped before the attempt began (`started` may find the run taken over).
        if stop.is_cancelled() {
            return Ok((
                attempt,
                Ending::Stopped {
                    during_retry_wait: false,
                    abandoned: false,
                },
            ));
        }
        let token = stop.child_token();
        let ctx = ActionCtx {
            cancel: token.clone(),
            attempt,
            run_id: plan.run_id.clone(),
            step: plan.step.clone(),
            session_id: plan.session_id.clone(),
            principal: plan.principal.clone(),
            caller: plan.caller,
            workdir: plan.workdir.clone(),
            phase: sink.phase_hook(),
            host: registry.host(),
        };
        let registry = registry.clone();
        let (module, action, p) = (
            plan.module.clone(),
            plan.action.clone(),
            plan.params.clone(),
        );
        // A panic inside an action fails this attempt (INTERNAL_ERROR, not
        // retried), never the run driver or the server.
        let mut fut = Box::pin(async move {
            use futures::FutureExt as _;
            let name = format!("{module}.{action}");
            std::panic::AssertUnwindSafe(registry.call(&module, &action, p, ctx))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(panicked(&name, panic.as_ref())))
        });
        let deadline = plan
            .timeout_seconds
            .map(|t| crate::model::bounds::deadline_after(Duration::from_secs(t)));
        let outcome = tokio::select! {
            r = &mut fut => Outcome::Done(r),
            _ = sleep_until(deadline) => Outcome::Timeout,
            _ = stop.cancelled() => Outcome::Stopped,
        };
        let mut abandoned = false;
        let outcome = match outcome {
            // An action that stopped because its owner was stopped.
            Outcome::Done(Err(_)) if stop.is_cancelled() => Outcome::Stopped,
            Outcome::Done(r) => Outcome::Done(r),
            other => {
                // Ask the action to stop; abandon it if it does not.
                token.cancel();
                if tokio::time::timeout(ABANDON_AFTER, &mut fut).await.is_err() {
                    tracing::warn!(run = %plan.run_id, step = %plan.step, "action ignored cancellation; abandoned");
                    abandoned = true;
                }
                other
            }
        };
        let (code, message) = match outcome {
            Outcome::Done(Ok(out)) => return Ok((attempt, Ending::Succeeded(out))),
            Outcome::Stopped => {
                return Ok((
                    attempt,
                    Ending::Stopped {
                        during_retry_wait: false,
                        abandoned,
                    },
                ));
            }
            Outcome::Timeout => (
                ErrorCode::TimeoutExceeded,
                abandon_note(
                    &format!(
                        "attempt {attempt} exceeded the timeout of {} s",
                        plan.timeout_seconds.unwrap_or_default()
                    ),
                    abandoned,
                ),
            ),
            Outcome::Done(Err(e)) => (e.code, e.message),
        };
        let timed_out = code == ErrorCode::TimeoutExceeded;
        let retryable = !matches!(
            code,
            ErrorCode::InvalidParameters
                | ErrorCode::ModuleNotFound
                | ErrorCode::PermissionDenied
                | ErrorCode::LimitExceeded
                | ErrorCode::InternalError
        );
        if attempt >= max_attempts || !retryable {
            return Ok((
                attempt,
                Ending::Failed {
                    code,
                    message,
                    timed_out,
                },
            ));
        }
        sink.retrying(attempt, code, &message).await?;
        let delay = Duration::from_millis(plan.retry.delay_ms(attempt + 1));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => {
                return Ok((attempt, Ending::Stopped { during_retry_wait: true, abandoned: false }));
            }
        }
    }
}

/// The error of an action that panicked, with the panic's message.
pub fn panicked(what: &str, panic: &(dyn std::any::Any + Send)) -> ActionError {
    let why = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!(action = what, panic = %why, "an action panicked");
    ActionError::new(
        ErrorCode::InternalError,
        format!(
            "{what} failed inside myrmex ({}); this is a bug, the rest of the run goes on",
            crate::error::excerpt(&why)
        ),
    )
}

enum Outcome {
    Done(std::result::Result<Value, ActionError>),
    Timeout,
    Stopped,
}

/// Sleep until the deadline; forever without one.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Say so when the action had to be abandoned.
pub fn abandon_note(message: &str, abandoned: bool) -> String {
    if abandoned {
        format!(
            "{message}; the action ignored cancellation for {} s and was abandoned",
            ABANDON_AFTER.as_secs()
        )
    } else {
        message.to_string()
    }
}
